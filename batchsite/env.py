"""Strict environment parsing for settings: a bad value stops start-up with a clear message."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false, yes/no), got {raw!r}.")


def env_int(
    name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip().replace("_", ""))
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}, got {value}.")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}.") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {value}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


# A duration as the Batch API writes its completion windows: a positive integer and a unit.
_DURATION = re.compile(r"([1-9][0-9]*)([mhd])")
_DURATION_UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}
# Far past any useful window, and far short of the year 9999 where expires_at would overflow.
DURATION_MAX_SECONDS = 366 * 86400


def duration_seconds(value: str) -> int | None:
    """'90m' -> 5400, '24h' -> 86400, '2d' -> 172800; None for anything else, or over a year."""
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    seconds = int(match[1]) * _DURATION_UNIT_SECONDS[match[2]]
    return seconds if seconds <= DURATION_MAX_SECONDS else None


def env_durations(name: str, default: list[str]) -> list[str]:
    """A non-empty comma-separated list of durations (``24h,72h,7d``), kept as written."""
    values = env_list(name, default)
    if not values:
        raise ImproperlyConfigured(f"{name} must name at least one duration, such as 24h.")
    bad = [value for value in values if duration_seconds(value) is None]
    if bad:
        raise ImproperlyConfigured(
            f"{name} must be durations written <positive integer><m|h|d> of at most 366d, such "
            f"as 90m, 24h or 7d; got {', '.join(repr(value) for value in bad)}."
        )
    return values


def database_from_url(url: str, *, base_dir: Path) -> dict[str, Any]:
    """``sqlite:///path`` or ``postgres://user:pw@host:port/name?opt=v`` -> DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = unquote(parts.path)
        # sqlite:///relative/path and sqlite:////absolute/path, as dj-database-url reads them.
        db_path = Path(path[1:]) if path.startswith("/") else Path(path)
        if str(db_path) != ":memory:" and not db_path.is_absolute():
            db_path = base_dir / db_path
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(db_path),
            # Several processes (web, workers) share one file: wait for locks instead of failing,
            # and (WAL) let the API read while a worker writes a chunk's results.
            "OPTIONS": {
                "timeout": 30,
                "transaction_mode": "IMMEDIATE",
                "init_command": "PRAGMA journal_mode=WAL",
            },
            # A new SQLite connection reads the schema on its first query: that was two thirds
            # of a GET /v1/batches/{id}. Connections live on, as PostgreSQL's do.
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    if parts.scheme in {"postgres", "postgresql", "pgsql"}:
        name = unquote(parts.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("DATABASE_URL must name a database: postgres://host/NAME.")
        try:
            port = parts.port
        except ValueError:
            raise ImproperlyConfigured(
                f"DATABASE_URL has an invalid port: {parts.netloc.rpartition('@')[2]!r}."
            ) from None
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parts.username or ""),
            "PASSWORD": unquote(parts.password or ""),
            "HOST": parts.hostname or "",
            "PORT": str(port or ""),
            "OPTIONS": dict(parse_qsl(parts.query)),
            "CONN_MAX_AGE": 60,
            "CONN_HEALTH_CHECKS": True,
        }
    raise ImproperlyConfigured(
        f"DATABASE_URL scheme {parts.scheme!r} is not supported; use sqlite:/// or postgres://."
    )
