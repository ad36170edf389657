"""Bearer API keys for /v1: looked up by their public prefix, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from batches.models import ApiKey

# Hash compared when the prefix is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = ApiKey.hash_secret("not-a-key")
# last_used_at is informative only; writing it on every request would cost a row lock each time.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


# Keys verified recently in this process: sha256 of the whole key -> (valid until, key with its
# owner). Looking a key up costs a query (and its SQL compilation) on every request, which was
# half of GET /v1/batches/{id}'s time. Only valid keys are kept, so the cache holds at most one
# entry per live key. Saving or deleting a key or a user empties it here at once (see
# verified_keys_forget); other processes notice a revocation within API_KEY_CACHE_SECONDS.
_verified: dict[str, tuple[float, ApiKey]] = {}


def verified_keys_forget(**kwargs: Any) -> None:
    """Signal receiver: drop every cached key (revocations are rare, the cache refills fast)."""
    _verified.clear()


def _masked(raw_key: str) -> str:
    return f"{raw_key[:12]}…{raw_key[-4:]}" if len(raw_key) > 20 else "***"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[Any, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, raw_key = header.partition(" ")
        raw_key = raw_key.strip()
        if keyword.lower() != self.keyword.lower() or not raw_key:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: expected 'Bearer YOUR_KEY'."
            )
        return self.authenticate_key(raw_key)

    def authenticate_key(self, raw_key: str) -> tuple[Any, ApiKey]:
        digest = hashlib.sha256(raw_key.encode()).hexdigest()
        cached = _verified.get(digest)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1].owner, cached[1]
        key = self._verify(raw_key)
        ttl = settings.API_KEY_CACHE_SECONDS
        if ttl > 0:
            _verified[digest] = (time.monotonic() + ttl, key)
        return key.owner, key

    def _verify(self, raw_key: str) -> ApiKey:
        parts = ApiKey.split(raw_key)
        key = None
        if parts is not None:
            rows = ApiKey.objects.select_related("owner").filter(prefix=parts[0])[:1]
            key = next(iter(rows), None)
        expected = key.secret_hash if key is not None else _DUMMY_HASH
        given = ApiKey.hash_secret(parts[1] if parts else raw_key)
        if (
            not hmac.compare_digest(expected, given)
            or key is None
            or not key.is_active
            or not key.owner.is_active
        ):
            raise exceptions.AuthenticationFailed(
                f"Incorrect API key provided: {_masked(raw_key)}."
            )
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
        return key

    def authenticate_header(self, request: Request) -> str:
        # Any value here makes DRF answer 401 (not 403) when the key is missing.
        return 'Bearer realm="api"'
