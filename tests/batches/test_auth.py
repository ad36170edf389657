"""API keys on every /v1 route, and every route scoped to the key's owner."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from batches import services
from batches.auth import verified_keys_forget
from batches.models import ApiKey, Batch, File
from tests.batches.conftest import upload

pytestmark = pytest.mark.django_db

# Every /v1 route that answers JSON: (method, path). {file} and {batch} are filled with real ids.
# The Swagger UI page (/v1/docs) is HTML and has its own tests below.
ROUTES = [
    ("get", "/v1/files"),
    ("post", "/v1/files"),
    ("get", "/v1/files/{file}"),
    ("get", "/v1/files/{file}/content"),
    ("delete", "/v1/files/{file}"),
    ("get", "/v1/batches"),
    ("post", "/v1/batches"),
    ("get", "/v1/batches/{batch}"),
    ("post", "/v1/batches/{batch}/cancel"),
    ("get", "/v1/models"),
    ("get", "/v1/models/tiny-chat"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/no-such-route"),
]
# Routes that name one of the owner's objects: another key must not see them.
OBJECT_ROUTES = [(method, path) for method, path in ROUTES if "{" in path]


@pytest.fixture
def owners_objects(
    make_file: Callable[..., File], make_batch: Callable[..., Batch]
) -> dict[str, str]:
    file = make_file(b'{"custom_id": "a"}\n')
    return {"file": file.id, "batch": make_batch(input_file_id=file.id).id}


def call(client: APIClient | Client, method: str, path: str, ids: dict[str, str]) -> Any:
    response = getattr(client, method)(path.format(**ids))
    return response


def error_of(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body: dict[str, Any] = response.json()
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_answers_401_without_a_key(
    anonymous_api: APIClient, owners_objects: dict[str, str], method: str, path: str
) -> None:
    error = error_of(call(anonymous_api, method, path, owners_objects), 401)

    assert error == {
        "message": "You didn't provide an API key. You need to provide your API key in an "
        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_answers_401_to_a_wrong_key(
    owners_objects: dict[str, str], owner_key: str, method: str, path: str
) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {owner_key[:-4]}abcd")

    error = error_of(call(client, method, path, owners_objects), 401)

    assert error["code"] == "invalid_api_key"
    assert error["message"].startswith("Incorrect API key provided: sk-batch-")
    assert owner_key not in error["message"]


@pytest.mark.parametrize(("method", "path"), OBJECT_ROUTES)
def test_another_owners_objects_answer_404_on_every_route(
    other_api: APIClient, owners_objects: dict[str, str], method: str, path: str
) -> None:
    response = call(other_api, method, path, owners_objects)

    assert error_of(response, 404)["type"] == "invalid_request_error"
    assert File.objects.filter(pk=owners_objects["file"]).exists()
    assert Batch.objects.get(pk=owners_objects["batch"]).status == Batch.Status.VALIDATING


def test_lists_show_only_the_keys_own_objects(
    api: APIClient, other_api: APIClient, owners_objects: dict[str, str]
) -> None:
    theirs_file = upload(other_api, b"x\n").json()["id"]
    theirs_batch = other_api.post(
        "/v1/batches",
        {"input_file_id": theirs_file, "endpoint": "/v1/embeddings", "completion_window": "24h"},
        format="json",
    ).json()["id"]

    assert [f["id"] for f in api.get("/v1/files").json()["data"]] == [owners_objects["file"]]
    assert [b["id"] for b in api.get("/v1/batches").json()["data"]] == [owners_objects["batch"]]
    assert [f["id"] for f in other_api.get("/v1/files").json()["data"]] == [theirs_file]
    assert [b["id"] for b in other_api.get("/v1/batches").json()["data"]] == [theirs_batch]


def test_a_cursor_from_another_owner_reveals_nothing(
    api: APIClient, other_api: APIClient, owners_objects: dict[str, str]
) -> None:
    theirs = upload(other_api, b"x\n").json()["id"]

    body = api.get("/v1/files", {"after": theirs, "order": "asc"}).json()

    assert all(file["id"] != theirs for file in body["data"])


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer    ", "Token sk-batch-abc"],
)
def test_a_malformed_authorization_header_is_401(header: str, db: None) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    error = error_of(client.get("/v1/files"), 401)

    assert error["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "raw_key",
    [
        "sk-batch-00000000-secret",  # well-formed, unknown prefix
        "sk-batch-short-secret",  # prefix of the wrong length
        "sk-batch-0123456789",  # no secret part
        "sk-proj-abcdefghijklmnopqrstuvwxyz",  # someone else's key format
        "x",
    ],
)
def test_keys_that_are_not_ours_are_401(raw_key: str, db: None) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")

    assert error_of(client.get("/v1/files"), 401)["code"] == "invalid_api_key"


def test_a_revoked_key_is_401(api: APIClient, owner_key: str) -> None:
    assert api.get("/v1/files").status_code == 200

    services.api_key_revoke(key=ApiKey.objects.get())

    assert error_of(api.get("/v1/files"), 401)["code"] == "invalid_api_key"


def test_revoking_twice_keeps_the_first_revocation_time(owner_key: str) -> None:
    key = ApiKey.objects.get()
    services.api_key_revoke(key=key)
    first = key.revoked_at

    services.api_key_revoke(key=key)

    key.refresh_from_db()
    assert key.revoked_at == first
    assert not key.is_active


def test_a_verified_key_is_trusted_for_a_while_without_a_query(
    api: APIClient, owner_key: str, django_assert_num_queries: Callable[..., Any]
) -> None:
    assert api.get("/v1/models").status_code == 200

    with django_assert_num_queries(1):  # the models, not the key
        assert api.get("/v1/models").status_code == 200


def test_a_revocation_made_elsewhere_takes_effect_within_the_cache_time(
    api: APIClient, owner_key: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.API_KEY_CACHE_SECONDS = 10
    now = [1000.0]
    monkeypatch.setattr("batches.auth.time.monotonic", lambda: now[0])
    assert api.get("/v1/files").status_code == 200
    # Another process revokes the key: no signal reaches this one.
    ApiKey.objects.update(revoked_at=timezone.now())

    now[0] += 9
    assert api.get("/v1/files").status_code == 200
    now[0] += 2
    assert error_of(api.get("/v1/files"), 401)["code"] == "invalid_api_key"


def test_with_no_cache_time_every_request_reads_the_key(
    api: APIClient, owner_key: str, settings: Any
) -> None:
    settings.API_KEY_CACHE_SECONDS = 0
    assert api.get("/v1/files").status_code == 200

    ApiKey.objects.update(revoked_at=timezone.now())

    assert error_of(api.get("/v1/files"), 401)["code"] == "invalid_api_key"


def test_the_key_of_a_deactivated_user_is_401(api: APIClient, owner: User) -> None:
    owner.is_active = False
    owner.save()

    assert error_of(api.get("/v1/files"), 401)["code"] == "invalid_api_key"


def test_a_key_is_prefixed_and_only_its_hash_is_stored(owner: User) -> None:
    key, raw = services.api_key_create(owner=owner, name="ci")

    assert raw.startswith(f"sk-batch-{key.prefix}-")
    secret = raw[len(f"sk-batch-{key.prefix}-") :]  # url-safe: may itself contain "-"
    assert len(key.prefix) == 8
    assert len(secret) >= 43  # 256 random bits
    assert ApiKey.split(raw) == (key.prefix, secret)
    assert key.secret_hash == ApiKey.hash_secret(secret) != secret
    assert str(key) == f"ci (sk-batch-{key.prefix}…)"


def test_the_secret_is_compared_in_constant_time_even_for_an_unknown_prefix(
    monkeypatch: pytest.MonkeyPatch, db: None
) -> None:
    compared: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr("batches.auth.hmac.compare_digest", spy)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer sk-batch-00000000-guess")

    assert client.get("/v1/files").status_code == 401
    assert len(compared) == 1
    assert compared[0][1] == ApiKey.hash_secret("guess")


def test_it_records_when_a_key_was_last_used_at_most_once_a_minute(
    api: APIClient, owner_key: str
) -> None:
    api.get("/v1/files")
    first = ApiKey.objects.get().last_used_at
    assert first is not None

    api.get("/v1/files")
    assert ApiKey.objects.get().last_used_at == first

    ApiKey.objects.update(last_used_at=timezone.now() - timedelta(minutes=5))
    verified_keys_forget()  # as after API_KEY_CACHE_SECONDS: the row is read again
    api.get("/v1/files")
    last_used = ApiKey.objects.get().last_used_at
    assert last_used is not None and last_used > first


# --- The schema and its Swagger UI also accept a logged-in session ------------------------


@pytest.mark.parametrize("header", [None, "Bearer sk-batch-00000000-guess"])
def test_the_docs_page_answers_401_without_a_valid_key_or_session(
    header: str | None, db: None
) -> None:
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)

    response = client.get("/v1/docs")

    # A page for browsers: DRF's plain HTML error page rather than the JSON envelope.
    assert response.status_code == 401
    assert b"swagger" not in response.content.lower()


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/v1/docs"])
def test_the_schema_and_docs_accept_a_key(api: APIClient, path: str) -> None:
    assert api.get(path).status_code == 200


@pytest.mark.parametrize("path", ["/v1/openapi.json", "/v1/docs"])
def test_the_schema_and_docs_accept_a_logged_in_session(
    client: Client, staff: User, path: str
) -> None:
    client.force_login(staff)

    response = client.get(path)

    assert response.status_code == 200


def test_the_schema_is_served_as_json(api: APIClient) -> None:
    response = api.get("/v1/openapi.json")

    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert response.json()["openapi"].startswith("3.")


def test_the_docs_page_points_at_the_schema(api: APIClient) -> None:
    assert b"/v1/openapi.json" in api.get("/v1/docs").content


def test_a_session_does_not_open_the_batch_api(client: Client, owner: User) -> None:
    client.force_login(owner)

    assert client.get("/v1/files").status_code == 401


# --- manage.py create_api_key ---------------------------------------------------------------


def test_create_api_key_prints_a_working_key_as_its_last_line(
    capsys: pytest.CaptureFixture[str], db: None
) -> None:
    call_command("create_api_key", "--name", "ci", "--user", "robot")

    raw = capsys.readouterr().out.strip().splitlines()[-1]
    assert raw.startswith("sk-batch-")
    key = ApiKey.objects.get()
    assert (key.name, key.owner.username) == ("ci", "robot")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert client.get("/v1/files").status_code == 200


def test_create_api_key_reuses_an_existing_user(
    owner: User, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("create_api_key", "--name", "second", "--user", owner.username)

    assert User.objects.count() == 1
    assert ApiKey.objects.get().owner == owner
