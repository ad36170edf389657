"""batchsite.env: settings read from the environment fail loudly on bad values."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from batches import services
from batchsite.env import (
    database_from_url,
    env_bool,
    env_durations,
    env_float,
    env_int,
    env_list,
    env_str,
)

BASE = Path("/srv/batch")


@pytest.fixture(autouse=True)
def clean_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BATCH_TEST_VALUE", raising=False)


def set_value(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BATCH_TEST_VALUE", value)


def test_unset_variables_give_their_defaults() -> None:
    assert env_str("BATCH_TEST_VALUE", "d") == "d"
    assert env_bool("BATCH_TEST_VALUE", True) is True
    assert env_int("BATCH_TEST_VALUE", 3) == 3
    assert env_float("BATCH_TEST_VALUE", 0.5) == 0.5
    assert env_list("BATCH_TEST_VALUE", ["a"]) == ["a"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("off", False)],
)
def test_booleans_read_the_usual_spellings(
    monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool
) -> None:
    set_value(monkeypatch, raw)

    assert env_bool("BATCH_TEST_VALUE", not expected) is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "tru"])
def test_a_bad_boolean_stops_start_up(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    set_value(monkeypatch, raw)

    with pytest.raises(ImproperlyConfigured, match="BATCH_TEST_VALUE must be a boolean"):
        env_bool("BATCH_TEST_VALUE", False)


def test_integers_accept_underscores(monkeypatch: pytest.MonkeyPatch) -> None:
    set_value(monkeypatch, " 50_000 ")

    assert env_int("BATCH_TEST_VALUE", 1) == 50_000


@pytest.mark.parametrize("raw", ["", "ten", "1.5", "1e3"])
def test_a_bad_integer_stops_start_up(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    set_value(monkeypatch, raw)

    with pytest.raises(ImproperlyConfigured, match="must be an integer"):
        env_int("BATCH_TEST_VALUE", 1)


def test_an_integer_below_its_minimum_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    set_value(monkeypatch, "0")

    with pytest.raises(ImproperlyConfigured, match="must be at least 1, got 0"):
        env_int("BATCH_TEST_VALUE", 5, minimum=1)


def test_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    set_value(monkeypatch, "0.25")

    assert env_float("BATCH_TEST_VALUE", 1.0, minimum=0.1) == 0.25


@pytest.mark.parametrize(("raw", "message"), [("fast", "must be a number"), ("0", "at least")])
def test_a_bad_number_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, raw: str, message: str
) -> None:
    set_value(monkeypatch, raw)

    with pytest.raises(ImproperlyConfigured, match=message):
        env_float("BATCH_TEST_VALUE", 1.0, minimum=0.1)


def test_lists_are_comma_separated_without_blanks(monkeypatch: pytest.MonkeyPatch) -> None:
    set_value(monkeypatch, " 24h, ,72h ,")

    assert env_list("BATCH_TEST_VALUE", []) == ["24h", "72h"]


# --- BATCH_COMPLETION_WINDOWS ---------------------------------------------------------------


def test_durations_are_kept_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    set_value(monkeypatch, " 24h, 90m ,7d")

    assert env_durations("BATCH_TEST_VALUE", ["24h"]) == ["24h", "90m", "7d"]


@pytest.mark.parametrize("raw", ["2w", "h", "24", "0h", "024h", "-1d", "1.5h", "24H", "367d"])
def test_a_malformed_duration_stops_start_up(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    set_value(monkeypatch, f"24h,{raw}")

    with pytest.raises(ImproperlyConfigured, match=rf"<positive integer><m\|h\|d>.*got '{raw}'"):
        env_durations("BATCH_TEST_VALUE", ["24h"])


def test_an_empty_list_of_durations_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    set_value(monkeypatch, " , ")

    with pytest.raises(ImproperlyConfigured, match="must name at least one duration"):
        env_durations("BATCH_TEST_VALUE", ["24h"])


def test_settings_refuse_a_malformed_completion_window_at_start_up() -> None:
    environment = {**os.environ, "BATCH_COMPLETION_WINDOWS": "24h,2w"}
    environment.pop("DJANGO_SETTINGS_MODULE", None)

    # A fresh interpreter: these settings are read once, at import.
    result = subprocess.run(
        [sys.executable, "-c", "import batchsite.settings"],
        cwd=settings.BASE_DIR,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured: BATCH_COMPLETION_WINDOWS must be durations" in result.stderr


@pytest.mark.parametrize("window", ["1m", "90m", "24h", "72h", "2d", "366d", "8784h"])
def test_every_window_settings_accept_has_a_length_in_seconds(
    monkeypatch: pytest.MonkeyPatch, window: str
) -> None:
    set_value(monkeypatch, window)

    (accepted,) = env_durations("BATCH_TEST_VALUE", ["24h"])

    assert services.completion_window_seconds(accepted) > 0


# --- DATABASE_URL ---------------------------------------------------------------------------


def test_sqlite_with_an_absolute_path() -> None:
    config = database_from_url("sqlite:////var/lib/batch/db.sqlite3", base_dir=BASE)

    assert config["ENGINE"] == "django.db.backends.sqlite3"
    assert config["NAME"] == "/var/lib/batch/db.sqlite3"
    assert config["OPTIONS"]["timeout"] == 30


def test_sqlite_with_a_path_relative_to_the_project() -> None:
    config = database_from_url("sqlite:///var/db.sqlite3", base_dir=BASE)

    assert config["NAME"] == "/srv/batch/var/db.sqlite3"


def test_sqlite_in_memory() -> None:
    assert database_from_url("sqlite:///:memory:", base_dir=BASE)["NAME"] == ":memory:"


def test_postgres_with_every_part() -> None:
    config = database_from_url(
        "postgres://batch:p%40ss@db.internal:6543/batches?sslmode=require", base_dir=BASE
    )

    assert config == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "batches",
        "USER": "batch",
        "PASSWORD": "p@ss",
        "HOST": "db.internal",
        "PORT": "6543",
        "OPTIONS": {"sslmode": "require"},
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


@pytest.mark.parametrize("scheme", ["postgres", "postgresql", "pgsql"])
def test_postgres_with_defaults(scheme: str) -> None:
    config = database_from_url(f"{scheme}://localhost/batches", base_dir=BASE)

    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert (config["USER"], config["PASSWORD"], config["PORT"]) == ("", "", "")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://localhost/", "must name a database"),
        ("postgres://localhost:port/batches", "invalid port"),
        ("mysql://localhost/batches", "scheme 'mysql' is not supported"),
        ("db.sqlite3", "scheme '' is not supported"),
    ],
)
def test_a_bad_database_url_stops_start_up(url: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        database_from_url(url, base_dir=BASE)
