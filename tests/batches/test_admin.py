"""The operators' admin: files, batches (cancel), keys (shown once, revoke), models, queue."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth.models import User
from django.contrib.messages import get_messages
from django.test import Client
from rest_framework.test import APIClient

from batches.models import ApiKey, Batch, File
from inference.models import RegisteredModel

if TYPE_CHECKING:
    # What the test client returns, as the stubs name it (the class exists only in the stubs).
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(db: None) -> User:
    return User.objects.create_superuser("operator", password="operator-password-1")


@pytest.fixture
def admin(client: Client, operator: User) -> Client:
    client.force_login(operator)
    return client


def messages_of(response: TestResponse) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_an_operator_logs_in_through_the_admin_login_page(client: Client, operator: User) -> None:
    response = client.post(
        "/admin/login/?next=/admin/",
        {"username": "operator", "password": "operator-password-1"},
        follow=True,
    )

    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == "/admin/"
    assert b"Files and batches" in response.content


def test_a_user_who_is_not_staff_is_sent_to_the_login_page(client: Client, owner: User) -> None:
    client.force_login(owner)

    response = client.get("/admin/batches/batch/")

    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize(
    "path",
    [
        "/admin/",
        "/admin/batches/file/",
        "/admin/batches/batch/",
        "/admin/batches/batch/?status__exact=failed",
        "/admin/batches/apikey/",
        "/admin/batches/apikey/add/",
        "/admin/inference/registeredmodel/",
        "/admin/inference/registeredmodel/add/",
        "/admin/inference/worker/",
        "/admin/inference/batchchunk/",
        "/admin/django_q/ormq/",
        "/admin/django_q/success/",
        "/admin/django_q/failure/",
        "/admin/django_q/schedule/",
        "/admin/django_q/schedule/add/",
    ],
)
def test_the_operator_pages_load(admin: Client, path: str) -> None:
    assert admin.get(path).status_code == 200


def test_the_change_pages_of_each_object_load(
    admin: Client,
    make_file: Callable[..., File],
    make_batch: Callable[..., Batch],
    registered_model: RegisteredModel,
    owner_key: str,
) -> None:
    file = make_file(b"{}\n")
    errors = {"object": "list", "data": [{"code": "x", "message": "y", "param": None, "line": 1}]}
    batch = make_batch("failed", input_file_id=file.id, errors=errors)
    key = ApiKey.objects.get()

    for path in [
        f"/admin/batches/file/{file.pk}/change/",
        f"/admin/batches/batch/{batch.pk}/change/",
        f"/admin/batches/apikey/{key.pk}/change/",
        f"/admin/inference/registeredmodel/{registered_model.pk}/change/",
    ]:
        response = admin.get(path)
        assert response.status_code == 200, path
    assert owner_key.encode() not in admin.get(f"/admin/batches/apikey/{key.pk}/change/").content


@pytest.mark.parametrize("model", ["file", "batch"])
def test_files_and_batches_are_not_added_by_hand(admin: Client, model: str) -> None:
    assert admin.get(f"/admin/batches/{model}/add/").status_code == 403


def test_the_cancel_action_cancels_what_it_can_and_says_why_not_for_the_rest(
    admin: Client, make_batch: Callable[..., Batch]
) -> None:
    queued = make_batch("validating")
    running = make_batch("in_progress", lease_owner="gpu-1")
    done = make_batch("completed")

    response = admin.post(
        "/admin/batches/batch/",
        {"action": "cancel_batches", "_selected_action": [queued.pk, running.pk, done.pk]},
        follow=True,
    )

    assert response.status_code == 200
    statuses = dict(Batch.objects.values_list("id", "status"))
    assert statuses == {queued.id: "cancelled", running.id: "cancelling", done.id: "completed"}
    messages = messages_of(response)
    assert f"{done.id}: Cannot cancel a batch with status 'completed'." in messages
    assert "Cancelled or cancelling 2 batch(es)." in messages


def test_creating_a_key_shows_its_secret_once_and_the_secret_works(
    admin: Client, owner: User
) -> None:
    response = admin.post(
        "/admin/batches/apikey/add/", {"owner": owner.pk, "name": "from admin"}, follow=True
    )

    assert response.status_code == 200
    [shown] = [m for m in messages_of(response) if "copy it now" in m]
    raw = shown.rsplit(" ", 1)[1]
    key = ApiKey.objects.get()
    assert (key.name, key.owner) == ("from admin", owner)
    assert raw.startswith(f"sk-batch-{key.prefix}-")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert api.get("/v1/files").status_code == 200
    # Never again: not on the change page, not in the list.
    assert raw.encode() not in admin.get(f"/admin/batches/apikey/{key.pk}/change/").content
    assert raw.encode() not in admin.get("/admin/batches/apikey/").content


def test_renaming_a_key_keeps_its_secret(admin: Client, owner: User, owner_key: str) -> None:
    key = ApiKey.objects.get()

    admin.post(f"/admin/batches/apikey/{key.pk}/change/", {"owner": owner.pk, "name": "renamed"})

    key.refresh_from_db()
    assert key.name == "renamed"
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {owner_key}")
    assert api.get("/v1/files").status_code == 200


def test_the_revoke_action_revokes_keys(admin: Client, owner_key: str, other_key: str) -> None:
    selected = list(ApiKey.objects.values_list("pk", flat=True))

    response = admin.post(
        "/admin/batches/apikey/",
        {"action": "revoke_keys", "_selected_action": selected},
        follow=True,
    )

    assert "Revoked 2 key(s)." in messages_of(response)
    assert not ApiKey.objects.active().exists()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {owner_key}")
    assert api.get("/v1/files").status_code == 401


def test_the_cancel_action_reports_no_success_when_nothing_could_be_cancelled(
    admin: Client, make_batch: Callable[..., Batch]
) -> None:
    done = make_batch("completed")

    response = admin.post(
        "/admin/batches/batch/",
        {"action": "cancel_batches", "_selected_action": [done.pk]},
        follow=True,
    )

    assert messages_of(response) == [f"{done.id}: Cannot cancel a batch with status 'completed'."]
