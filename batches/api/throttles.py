"""Per-key limits: request rates on uploads and batch creation, and a cap on queued requests.

Both answer as OpenAI does when a limit is hit: HTTP 429, ``{"error": {"message", "type":
"requests", "param": null, "code": "rate_limit_exceeded"}}`` and a ``retry-after`` header (rate
limits through DRF's Throttled and the exception handler in batches.api.errors).

Rates come from ``settings.API_RATE_LIMITS`` (``"60/min"``, ``"1000/hour"``…; empty = no limit)
and are counted in the ``throttle`` cache: Django's database cache, so the limit holds across
every web process and machine on the shared database.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db.models import F, Sum
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from batches.api.errors import OpenAIError
from batches.models import ApiKey, Batch


class _PerKeyCreateThrottle(SimpleRateThrottle):
    """Counts a view's ``create`` calls per API key (per user for a browser session)."""

    cache = caches["throttle"]

    def get_rate(self) -> str | None:
        # Views build their throttles per request, so the setting is read each time (not frozen
        # at import as DRF's DEFAULT_THROTTLE_RATES is).
        rate: str | None = settings.API_RATE_LIMITS.get(self.scope or "")
        return rate or None

    def allow_request(self, request: Request, view: APIView) -> bool:
        if getattr(view, "action", None) != "create":
            return True
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view: APIView) -> str | None:
        if isinstance(request.auth, ApiKey):
            # The prefix, not the row id: ids can be reused, a key's random prefix never is.
            ident = f"key-{request.auth.prefix}"
        elif request.user is not None and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"ip-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class UploadRateThrottle(_PerKeyCreateThrottle):
    scope = "uploads"


class BatchCreateRateThrottle(_PerKeyCreateThrottle):
    scope = "batch_creates"


# --- Queued requests ----------------------------------------------------------------------------

# The client is told to come back after this long: queues drain in minutes, not seconds.
QUEUE_FULL_RETRY_AFTER_SECONDS = 60


def queued_requests(*, owner_id: Any, exclude_batch_id: str | None = None) -> int:
    """Requests of the owner's validated batches that have not run yet."""
    batches = Batch.objects.filter(owner_id=owner_id, status=Batch.Status.IN_PROGRESS)
    if exclude_batch_id is not None:
        batches = batches.exclude(pk=exclude_batch_id)
    total = batches.aggregate(
        n=Sum(F("request_total") - F("request_completed") - F("request_failed"))
    )["n"]
    return int(total or 0)


def queued_requests_check(*, owner: Any) -> None:
    """At batch creation: refuse with 429 while the owner's queue is at its cap."""
    cap = settings.BATCH_MAX_QUEUED_REQUESTS_PER_OWNER
    if not cap:
        return
    queued = queued_requests(owner_id=owner.pk)
    if queued >= cap:
        raise OpenAIError(
            f"Enqueued request limit reached: {queued:,} requests are waiting in your batches "
            f"(limit {cap:,}). Please try again once some in_progress batches have completed.",
            status_code=429,
            error_type="requests",
            code="rate_limit_exceeded",
            headers={"retry-after": str(QUEUE_FULL_RETRY_AFTER_SECONDS)},
        )


def queued_requests_error(*, batch: Batch, request_total: int) -> dict[str, Any] | None:
    """At validation: an ``errors.data`` entry if this batch would take the owner over the cap.

    For batches.services.batch_validate, once it knows the request count: the batch then
    fails as OpenAI fails one that passes the enqueued limit.
    """
    cap = settings.BATCH_MAX_QUEUED_REQUESTS_PER_OWNER
    if not cap:
        return None
    queued = queued_requests(owner_id=batch.owner_id, exclude_batch_id=batch.id)
    if queued + request_total <= cap:
        return None
    return {
        "code": "request_limit_exceeded",
        "message": f"Enqueued request limit reached: this batch's {request_total:,} requests "
        f"and the {queued:,} already waiting exceed the limit of {cap:,}. Please try again once "
        "some in_progress batches have completed.",
        "param": None,
        "line": None,
    }
