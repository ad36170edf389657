"""Personas and clients shared by the whole suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.test import APIClient

from batches import services
from inference.models import RegisteredModel


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """The test database, which PostgreSQL must be able to drop at the end.

    Connections can outlive their tests (a live server's threads held by a kept-alive client,
    an event loop's context in Playwright's tests): they would keep PostgreSQL from dropping the
    database, which fails the whole run. End them first.
    """
    yield
    with django_db_blocker.unblock():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    # The real hasher costs a second per persona; tests are not about hashing strength.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def owner(db: None) -> User:
    return User.objects.create_user("owner", password="owner-password-1")


@pytest.fixture
def other_owner(db: None) -> User:
    return User.objects.create_user("other", password="other-password-1")


@pytest.fixture
def staff(db: None) -> User:
    return User.objects.create_user("staff", password="staff-password-1", is_staff=True)


@pytest.fixture
def owner_key(owner: User) -> str:
    return services.api_key_create(owner=owner, name="owner key")[1]


@pytest.fixture
def other_key(other_owner: User) -> str:
    return services.api_key_create(owner=other_owner, name="other key")[1]


def _client(raw_key: str | None) -> APIClient:
    client = APIClient()
    if raw_key:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    return client


@pytest.fixture
def api(owner_key: str) -> APIClient:
    """The owner's API client."""
    return _client(owner_key)


@pytest.fixture
def other_api(other_key: str) -> APIClient:
    return _client(other_key)


@pytest.fixture
def anonymous_api() -> APIClient:
    return _client(None)


@pytest.fixture
def registered_model(db: None) -> RegisteredModel:
    """A registered model name for validation tests (no engine needed to validate)."""
    return RegisteredModel.objects.create(
        name="tiny-chat", source="/nonexistent", engine_args={"max_model_len": 512}
    )


def chat_line(custom_id: str, *, model: str = "tiny-chat", **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": "Hello"}], **body},
    }


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny random-weight model, built once into var/test-models and reused across runs."""
    from inference.tiny_model import TINY_MODEL_VERSION, tiny_model_ensure

    models_dir = Path(__file__).resolve().parent.parent / "var" / "test-models"
    return tiny_model_ensure(models_dir / f"tiny-{TINY_MODEL_VERSION}")
