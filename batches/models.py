"""Files, batches and API keys: the objects of OpenAI's Files and Batch APIs, field for field."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from datetime import datetime
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

_id_clock_lock = threading.Lock()
_id_clock_last_ms = 0


def _time_ordered_id(prefix: str) -> str:
    # Millisecond time first, randomness second: ids sort in creation order, so cursor pagination
    # (`after`) and "newest first" are plain primary-key comparisons on one index. The clock never
    # repeats a millisecond within a process, so ids made in a burst keep their order too.
    global _id_clock_last_ms
    with _id_clock_lock:
        ms = max(int(time.time() * 1000), _id_clock_last_ms + 1)
        _id_clock_last_ms = ms
    return f"{prefix}{ms:012x}{secrets.token_hex(8)}"


def new_file_id() -> str:
    return _time_ordered_id("file-")


def new_batch_id() -> str:
    return _time_ordered_id("batch_")


def new_batch_request_id() -> str:
    return _time_ordered_id("batch_req_")


def unix(value: datetime | None) -> int | None:
    return None if value is None else int(value.timestamp())


def _file_storage_name(instance: File, filename: str) -> str:
    # The client's filename never reaches the storage path: no traversal, no collisions.
    return f"files/{instance.owner_id}/{instance.id}"


class FileQuerySet(models.QuerySet["File"]):
    def owned_by(self, user: Any) -> FileQuerySet:
        return self.filter(owner=user)

    def expired(self, *, now: datetime | None = None) -> FileQuerySet:
        return self.filter(expires_at__lte=now or timezone.now())


class FilePurpose(models.TextChoices):
    ASSISTANTS = "assistants"
    ASSISTANTS_OUTPUT = "assistants_output"
    BATCH = "batch"
    BATCH_OUTPUT = "batch_output"
    FINE_TUNE = "fine-tune"
    FINE_TUNE_RESULTS = "fine-tune-results"
    VISION = "vision"
    USER_DATA = "user_data"
    EVALS = "evals"


class BatchStatus(models.TextChoices):
    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"


class File(models.Model):
    Purpose = FilePurpose

    # Purposes a client may upload with; the others are written by the server.
    UPLOAD_PURPOSES: ClassVar[tuple[str, ...]] = (
        "assistants",
        "batch",
        "fine-tune",
        "vision",
        "user_data",
        "evals",
    )

    class Status(models.TextChoices):
        UPLOADED = "uploaded"
        PROCESSED = "processed"
        ERROR = "error"

    id = models.CharField(primary_key=True, max_length=64, default=new_file_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="files"
    )
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField(default=0)
    content = models.FileField(upload_to=_file_storage_name, max_length=255)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PROCESSED)
    # Null, not "": OpenAI's FileObject answers status_details null when there is nothing to say.
    status_details = models.TextField(null=True, blank=True)  # noqa: DJ001
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    objects = FileQuerySet.as_manager()

    class Meta:
        ordering = ("-id",)
        indexes = [
            # GET /v1/files: one owner's files, optionally one purpose, in id (= time) order.
            models.Index(fields=["owner", "purpose", "id"], name="file_owner_purpose_idx"),
            models.Index(fields=["owner", "id"], name="file_owner_idx"),
            # The retention sweep (batches.retention.files_delete_expired) reads only expiring rows.
            models.Index(
                fields=["expires_at"],
                name="file_expiring_idx",
                condition=Q(expires_at__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(bytes__gte=0), name="file_bytes_non_negative"),
            models.CheckConstraint(
                condition=Q(purpose__in=FilePurpose.values), name="file_purpose_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.filename})"


class BatchQuerySet(models.QuerySet["Batch"]):
    def owned_by(self, user: Any) -> BatchQuerySet:
        return self.filter(owner=user)

    def runnable(self) -> BatchQuerySet:
        """Batches a GPU worker may work on: running, or being cancelled (to finish the cancel)."""
        return self.filter(status__in=Batch.RUNNABLE_STATUSES)

    def terminal(self) -> BatchQuerySet:
        return self.filter(status__in=Batch.TERMINAL_STATUSES)

    def active(self) -> BatchQuerySet:
        return self.exclude(status__in=Batch.TERMINAL_STATUSES)


class Batch(models.Model):
    Status = BatchStatus

    class Endpoint(models.TextChoices):
        CHAT_COMPLETIONS = "/v1/chat/completions"
        COMPLETIONS = "/v1/completions"
        EMBEDDINGS = "/v1/embeddings"

    TERMINAL_STATUSES: ClassVar[tuple[str, ...]] = ("failed", "completed", "expired", "cancelled")
    RUNNABLE_STATUSES: ClassVar[tuple[str, ...]] = ("in_progress", "cancelling")

    id = models.CharField(primary_key=True, max_length=64, default=new_batch_id, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="batches"
    )
    endpoint = models.CharField(max_length=64, choices=Endpoint.choices)
    # A plain id, not a foreign key: OpenAI accepts any id here and fails the batch in validation.
    input_file_id = models.CharField(max_length=64)
    completion_window = models.CharField(max_length=16, default="24h")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    model = models.CharField(max_length=255, blank=True, default="")
    metadata = models.JSONField(null=True, blank=True)
    # Extra body field (not in OpenAI's API): higher runs first among batches of equal urgency.
    priority = models.IntegerField(default=0)
    errors = models.JSONField(null=True, blank=True)

    request_total = models.PositiveIntegerField(default=0)
    request_completed = models.PositiveIntegerField(default=0)
    request_failed = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)

    output_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    error_file = models.ForeignKey(
        File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    output_expires_after_seconds = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)

    # The GPU worker that holds this batch, until lease_expires_at; renewed while it works.
    lease_owner = models.CharField(max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)

    objects = BatchQuerySet.as_manager()

    class Meta:
        ordering = ("-id",)
        verbose_name_plural = "batches"
        indexes = [
            # GET /v1/batches: one owner's batches, newest first.
            models.Index(fields=["owner", "id"], name="batch_owner_idx"),
            # inference.services.batch_claim_next: the GPU worker's poll over runnable batches.
            models.Index(
                fields=["priority", "expires_at", "id"],
                name="batch_runnable_idx",
                condition=Q(status__in=["in_progress", "cancelling"]),
            ),
            # inference.services.batches_expire: non-terminal batches whose window has passed.
            models.Index(
                fields=["expires_at"],
                name="batch_open_expiry_idx",
                condition=Q(status__in=["validating", "in_progress", "cancelling", "finalizing"]),
            ),
            models.Index(fields=["input_file_id"], name="batch_input_file_idx"),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=BatchStatus.values), name="batch_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(request_completed__lte=F("request_total") - F("request_failed")),
                name="batch_request_counts_within_total",
            ),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=0) & Q(output_tokens__gte=0),
                name="batch_tokens_non_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL_STATUSES

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class ApiKeyQuerySet(models.QuerySet["ApiKey"]):
    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A bearer key: a public prefix to find the row and a secret stored only as a hash."""

    PREFIX = "sk-batch-"
    PREFIX_LENGTH = 8

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, unique=True, editable=False)
    secret_hash = models.CharField(max_length=64, editable=False)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.PREFIX}{self.prefix}…)"

    @staticmethod
    def hash_secret(secret: str) -> str:
        # The secret is 256 random bits: a fast hash is enough, there is nothing to brute-force.
        return hashlib.sha256(secret.encode()).hexdigest()

    @classmethod
    def split(cls, raw_key: str) -> tuple[str, str] | None:
        """``sk-batch-<prefix>-<secret>`` -> (prefix, secret), or None if it is not of that form."""
        if not raw_key.startswith(cls.PREFIX):
            return None
        rest = raw_key[len(cls.PREFIX) :]
        prefix, sep, secret = rest.partition("-")
        if not sep or len(prefix) != cls.PREFIX_LENGTH or not secret:
            return None
        return prefix, secret

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


# --- Webhooks and the per-batch event log (batches.webhooks, batches.events) -------------------


def new_webhook_endpoint_id() -> str:
    return _time_ordered_id("we_")


def new_webhook_secret() -> str:
    # Standard Webhooks: "whsec_" and base64 of the raw HMAC key (the openai SDK decodes it so).
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class WebhookEventType(models.TextChoices):
    BATCH_COMPLETED = "batch.completed"
    BATCH_FAILED = "batch.failed"
    BATCH_EXPIRED = "batch.expired"
    BATCH_CANCELLED = "batch.cancelled"


class WebhookEndpoint(models.Model):
    """Where an owner wants to hear about its batches' ends: OpenAI's webhook endpoint object."""

    EventType = WebhookEventType

    id = models.CharField(
        primary_key=True, max_length=64, default=new_webhook_endpoint_id, editable=False
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_endpoints"
    )
    name = models.CharField(max_length=255, blank=True, default="")
    url = models.URLField(max_length=2048)
    # Kept in the clear: signing needs the key itself. Shown once, at creation and rotation.
    secret = models.CharField(max_length=128, default=new_webhook_secret, editable=False)
    # After a rotation that keeps the old secret, deliveries carry both signatures until then.
    previous_secret = models.CharField(max_length=128, blank=True, default="", editable=False)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    event_types = models.JSONField(default=list)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        indexes = [
            # GET /v1/webhook_endpoints and the webhook handler: one owner's endpoints.
            models.Index(fields=["owner", "id"], name="webhook_endpoint_owner_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.url})"

    @property
    def secret_hint(self) -> str:
        return f"{self.secret[:10]}…{self.secret[-4:]}"

    def signing_secrets(self, *, now: datetime | None = None) -> list[str]:
        now = now or timezone.now()
        keep_previous = (
            self.previous_secret
            and self.previous_secret_expires_at is not None
            and self.previous_secret_expires_at > now
        )
        return [self.secret, self.previous_secret] if keep_previous else [self.secret]


class WebhookDelivery(models.Model):
    """One event for one endpoint: the exact bytes to send, and every attempt to send them."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RETRYING = "retrying"
        DELIVERED = "delivered"
        FAILED = "failed"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    # A plain id: the delivery record outlives a deleted batch.
    batch_id = models.CharField(max_length=64)
    event_id = models.CharField(max_length=64)
    event_type = models.CharField(max_length=32, choices=WebhookEventType.choices)
    payload = models.BinaryField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # Every attempt: {"at", "status_code", "error", "duration_ms"}.
    attempt_log = models.JSONField(default=list, blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name_plural = "webhook deliveries"
        constraints = [
            # One delivery per event and endpoint: a re-run result handler cannot send twice.
            models.UniqueConstraint(
                fields=["endpoint", "event_id"], name="webhook_delivery_unique_event"
            ),
        ]
        indexes = [
            models.Index(fields=["batch_id"], name="webhook_delivery_batch_idx"),
            models.Index(fields=["status", "created_at"], name="webhook_delivery_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} -> {self.endpoint_id} ({self.status})"


class BatchEvent(models.Model):
    """One line of a batch's story (validated, started, chunk done, cancelled, finalized, …)."""

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=32)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("at", "id")
        indexes = [
            # The operator's batch page: one batch's events in time order.
            models.Index(fields=["batch", "at"], name="batch_event_batch_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id} {self.kind}: {self.message}"
