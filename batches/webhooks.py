"""Signed webhooks, compatible with OpenAI's: ``batch.completed``, ``.failed``, ``.expired``,
``.cancelled``.

A batch's end reaches :func:`handle_batch_terminal` (a result handler, see batches.handlers),
which stores one :class:`~batches.models.WebhookDelivery` per subscribed endpoint, with the
exact bytes of the event, and queues :func:`webhook_deliver` on the CPU cluster.

Wire format (Standard Webhooks, as OpenAI sends it; ``openai.OpenAI().webhooks.unwrap``
verifies it):

* body ``{"object": "event", "id": "evt_…", "type": "batch.completed", "created_at": …,
  "data": {"id": "batch_…"}}``, the same bytes on every attempt;
* ``webhook-id`` (the event id, so receivers can drop duplicates), ``webhook-timestamp`` (unix
  seconds of this attempt), ``webhook-signature``: ``v1,<base64 HMAC-SHA256>`` of
  ``f"{webhook-id}.{webhook-timestamp}.{body}"`` keyed with the base64-decoded part of the
  endpoint's ``whsec_`` secret; two space-separated signatures while a rotated-out secret is
  still honoured.

Delivery: 2xx is success. A network error or a 5xx is retried with exponential backoff and
jitter up to ``WEBHOOK_MAX_ATTEMPTS``; anything else (3xx, 4xx, a refused target) fails at once.
Every attempt is appended to the delivery's ``attempt_log``; a failed delivery can be sent again
from the admin. Targets that resolve to loopback, link-local, private or other non-global
addresses are refused (unless ``WEBHOOK_ALLOW_PRIVATE_TARGETS``), and the connection goes to the
very address that was checked, so DNS cannot swap it in between.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client
import ipaddress
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django_q.tasks import async_task

from batches.api.errors import InvalidRequestError
from batches.events import batch_event_record
from batches.handlers import CPU_CLUSTER, backoff_delay, task_run_later
from batches.models import (
    Batch,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
    new_webhook_secret,
    unix,
)
from batchsite.logging import log_context

logger = logging.getLogger(__name__)

# Keyed by str, as Batch.status is typed: the Status members are str values themselves.
EVENT_TYPE_BY_STATUS: dict[str, WebhookEventType] = {
    Batch.Status.COMPLETED: WebhookEventType.BATCH_COMPLETED,
    Batch.Status.FAILED: WebhookEventType.BATCH_FAILED,
    Batch.Status.EXPIRED: WebhookEventType.BATCH_EXPIRED,
    Batch.Status.CANCELLED: WebhookEventType.BATCH_CANCELLED,
}
USER_AGENT = "batch-server-webhooks/1"
# Kept from a failing receiver's answer, for the operator: enough to read an error page's gist.
_ERROR_BODY_CHARS = 500
ROTATION_GRACE = timedelta(hours=24)


class UnsafeTargetError(Exception):
    """The URL may not be called: bad scheme, unresolvable, or a non-public address."""


# --- Endpoints ------------------------------------------------------------------------------


def _check_event_types(event_types: list[str]) -> list[str]:
    unknown = [t for t in event_types if t not in WebhookEventType.values]
    if not event_types or unknown:
        raise InvalidRequestError(
            f"Invalid value for 'event_types': {', '.join(unknown) or 'empty list'}. Supported "
            f"values are: {', '.join(WebhookEventType.values)}.",
            param="event_types",
            code="invalid_value",
        )
    return list(dict.fromkeys(event_types))


def _check_url(url: str) -> str:
    try:
        target_addresses(url)
    except UnsafeTargetError as error:
        raise InvalidRequestError(
            f"Invalid 'url': {error}", param="url", code="invalid_url"
        ) from None
    return url


def webhook_endpoint_create(
    *, owner: Any, url: str, event_types: list[str], name: str = ""
) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        owner=owner, url=_check_url(url), event_types=_check_event_types(event_types), name=name
    )


def webhook_endpoint_update(
    *,
    endpoint: WebhookEndpoint,
    url: str | None = None,
    event_types: list[str] | None = None,
    name: str | None = None,
    enabled: bool | None = None,
) -> WebhookEndpoint:
    if url is not None:
        endpoint.url = _check_url(url)
    if event_types is not None:
        endpoint.event_types = _check_event_types(event_types)
    if name is not None:
        endpoint.name = name
    if enabled is not None:
        endpoint.enabled = enabled
    endpoint.updated_at = timezone.now()
    endpoint.save(update_fields=["url", "event_types", "name", "enabled", "updated_at"])
    return endpoint


def webhook_endpoint_rotate_secret(
    *, endpoint: WebhookEndpoint, keep_old_secret: bool = False
) -> WebhookEndpoint:
    """A new secret; with ``keep_old_secret`` the old one also signs for 24 more hours."""
    now = timezone.now()
    endpoint.previous_secret = endpoint.secret if keep_old_secret else ""
    endpoint.previous_secret_expires_at = now + ROTATION_GRACE if keep_old_secret else None
    endpoint.secret = new_webhook_secret()
    endpoint.updated_at = now
    endpoint.save(
        update_fields=["secret", "previous_secret", "previous_secret_expires_at", "updated_at"]
    )
    return endpoint


# --- Events ---------------------------------------------------------------------------------


def event_id_for(batch_id: str, event_type: str) -> str:
    # Derived, not random: a re-run handler finds the deliveries it already made.
    return "evt_" + hashlib.sha256(f"{event_type}:{batch_id}".encode()).hexdigest()[:32]


def event_payload(*, batch: Batch, event_type: str) -> bytes:
    ended_at = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at
    event = {
        "object": "event",
        "id": event_id_for(batch.id, event_type),
        "type": event_type,
        "created_at": unix(ended_at or timezone.now()),
        "data": {"id": batch.id},
    }
    return json.dumps(event, separators=(",", ":")).encode()


def handle_batch_terminal(batch: Batch) -> None:
    """Result handler: queue this batch's event for each endpoint of its owner that wants it."""
    event_type = EVENT_TYPE_BY_STATUS.get(batch.status)
    if event_type is None:
        return
    event_id = event_id_for(batch.id, event_type)
    payload = event_payload(batch=batch, event_type=event_type)
    for endpoint in WebhookEndpoint.objects.filter(owner_id=batch.owner_id, enabled=True):
        if event_type not in endpoint.event_types:
            continue
        delivery, created = WebhookDelivery.objects.get_or_create(
            endpoint=endpoint,
            event_id=event_id,
            defaults={"batch_id": batch.id, "event_type": event_type, "payload": payload},
        )
        if created:
            transaction.on_commit(partial(webhook_deliver_enqueue, delivery.pk))


def webhook_deliver_enqueue(delivery_id: int, round_start: int = 0) -> None:
    async_task(
        "batches.webhooks.webhook_deliver",
        delivery_id,
        round_start,
        cluster=CPU_CLUSTER,
        group="webhooks",
    )


def webhook_delivery_retry(*, delivery: WebhookDelivery) -> bool:
    """Send a failed delivery again (admin action): a fresh round of WEBHOOK_MAX_ATTEMPTS."""
    updated = WebhookDelivery.objects.filter(
        pk=delivery.pk, status=WebhookDelivery.Status.FAILED
    ).update(status=WebhookDelivery.Status.PENDING, next_attempt_at=timezone.now())
    if updated:
        attempts = delivery.attempts
        transaction.on_commit(lambda: webhook_deliver_enqueue(delivery.pk, attempts))
    return bool(updated)


# --- Signing and sending ----------------------------------------------------------------------


def webhook_signature(*, secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one ``v1,<base64>`` per secret, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    signatures = []
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        digest = hmac.new(key, signed, hashlib.sha256).digest()
        signatures.append("v1," + base64.b64encode(digest).decode())
    return " ".join(signatures)


def target_addresses(url: str) -> list[str]:
    """The addresses ``url`` resolves to, all of them public unless private targets are allowed."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise UnsafeTargetError("the URL must be http:// or https:// with a host name")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError) as error:
        raise UnsafeTargetError(f"cannot resolve {parts.hostname}: {error}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            mapped = getattr(ip, "ipv4_mapped", None)
            if not (mapped or ip).is_global or ip.is_multicast:
                raise UnsafeTargetError(
                    f"{parts.hostname} resolves to {address}, a loopback, link-local, private or "
                    "reserved address; webhooks only go to public addresses"
                )
    return addresses


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked in advance while the Host header keeps the name."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """As above, with TLS verified against the host name (SNI and certificate)."""

    def __init__(self, host: str, port: int, *, address: str, timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


@dataclass(frozen=True)
class AttemptResult:
    status_code: int | None
    error: str
    retryable: bool

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def webhook_post(*, url: str, body: bytes, headers: dict[str, str]) -> AttemptResult:
    """One POST of ``body``: never follows redirects, never raises."""
    try:
        address = target_addresses(url)[0]
    except UnsafeTargetError as error:
        return AttemptResult(None, f"refused target: {error}", retryable=False)
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(
        parts.hostname or "",
        parts.port or (443 if parts.scheme == "https" else 80),
        address=address,
        timeout=settings.WEBHOOK_TIMEOUT_SECONDS,
    )
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        answer = response.read(64 * 1024).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException) as error:
        return AttemptResult(None, f"{type(error).__name__}: {error}", retryable=True)
    finally:
        connection.close()
    code = response.status
    if 200 <= code < 300:
        return AttemptResult(code, "", retryable=False)
    return AttemptResult(code, f"HTTP {code}: {answer[:_ERROR_BODY_CHARS]}", retryable=code >= 500)


def webhook_deliver(delivery_id: int, round_start: int = 0) -> str:
    """CPU task: one attempt; schedules the next one on a retryable failure. Returns the status."""
    delivery = WebhookDelivery.objects.select_related("endpoint").filter(pk=delivery_id).first()
    if delivery is None or delivery.status == WebhookDelivery.Status.DELIVERED:
        return "gone" if delivery is None else delivery.status
    with log_context(batch_id=delivery.batch_id):
        return _attempt(delivery, round_start)


def _attempt(delivery: WebhookDelivery, round_start: int) -> str:
    endpoint = delivery.endpoint
    body = bytes(delivery.payload)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": delivery.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": webhook_signature(
            secrets=endpoint.signing_secrets(),
            msg_id=delivery.event_id,
            timestamp=timestamp,
            body=body,
        ),
    }
    started = time.monotonic()
    result = webhook_post(url=endpoint.url, body=body, headers=headers)
    now = timezone.now()
    delivery.attempts += 1
    delivery.attempt_log = [
        *delivery.attempt_log,
        {
            "at": now.isoformat(),
            "status_code": result.status_code,
            "error": result.error,
            "duration_ms": round((time.monotonic() - started) * 1000),
        },
    ]
    delivery.last_status_code = result.status_code
    delivery.last_error = result.error
    delivery.next_attempt_at = None
    round_attempts = delivery.attempts - round_start
    if result.ok:
        delivery.status = WebhookDelivery.Status.DELIVERED
        delivery.delivered_at = now
    elif result.retryable and round_attempts < settings.WEBHOOK_MAX_ATTEMPTS:
        delay = backoff_delay(
            attempt=round_attempts,
            base_seconds=settings.WEBHOOK_RETRY_BASE_SECONDS,
            max_seconds=settings.WEBHOOK_RETRY_MAX_SECONDS,
        )
        delivery.status = WebhookDelivery.Status.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=delay)
        task_run_later(
            "batches.webhooks.webhook_deliver", delivery.pk, round_start, delay_seconds=delay
        )
    else:
        delivery.status = WebhookDelivery.Status.FAILED
    delivery.save(
        update_fields=[
            "attempts",
            "attempt_log",
            "last_status_code",
            "last_error",
            "next_attempt_at",
            "status",
            "delivered_at",
        ]
    )
    _log_outcome(delivery, result)
    return delivery.status


def _log_outcome(delivery: WebhookDelivery, result: AttemptResult) -> None:
    where = f"{delivery.event_type} to {delivery.endpoint.url}"
    batch_exists = Batch.objects.filter(pk=delivery.batch_id).exists()
    if not batch_exists or delivery.status == WebhookDelivery.Status.RETRYING:
        logger.warning(
            "webhook %s attempt %d: %s",
            where,
            delivery.attempts,
            result.error or delivery.status,
            extra={"delivery_status": delivery.status, "next_attempt_at": delivery.next_attempt_at},
        )
    elif delivery.status == WebhookDelivery.Status.DELIVERED:
        batch_event_record(
            batch_id=delivery.batch_id,
            kind="webhook_delivered",
            message=f"Webhook {where} delivered (HTTP {result.status_code}, attempt "
            f"{delivery.attempts}).",
            endpoint=delivery.endpoint_id,
            attempts=delivery.attempts,
        )
    else:
        batch_event_record(
            batch_id=delivery.batch_id,
            kind="webhook_failed",
            message=f"Webhook {where} failed after {delivery.attempts} attempt(s): {result.error}",
            endpoint=delivery.endpoint_id,
            attempts=delivery.attempts,
        )
