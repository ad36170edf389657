"""Signed webhooks: OpenAI's wire format, retries with backoff, SSRF refusal, the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import openai
import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone
from django_q.conf import Conf
from django_q.models import OrmQ, Schedule
from django_q.scheduler import scheduler
from openai.types.webhooks import WebhookEndpoint as SdkWebhookEndpoint
from openai.types.webhooks import WebhookEndpointWithSecret
from pytest_django.fixtures import Settings as SettingsWrapper
from rest_framework.test import APIClient

from batches import webhooks
from batches.models import Batch, BatchEvent, WebhookDelivery, WebhookEndpoint
from tests.ops.conftest import Receiver

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _local_targets(settings: SettingsWrapper) -> None:
    # The receiver listens on 127.0.0.1, which production refuses.
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = True
    settings.WEBHOOK_RETRY_BASE_SECONDS = 10.0


def ended_batch(owner: User, status: str = "completed") -> Batch:
    now = timezone.now()
    stamp = f"{status}_at"
    return Batch.objects.create(
        owner=owner,
        endpoint="/v1/chat/completions",
        input_file_id="file-x",
        status=status,
        model="tiny-chat",
        **{stamp: now},
    )


def endpoint_for(owner: User, url: str, events: list[str] | None = None) -> WebhookEndpoint:
    return WebhookEndpoint.objects.create(
        owner=owner, url=url, event_types=events or ["batch.completed", "batch.failed"]
    )


Made = Callable[[Batch], list[WebhookDelivery]]


@pytest.fixture
def made(django_capture_on_commit_callbacks: Any) -> Made:
    """Runs the webhook result handler for a batch; returns the batch's deliveries."""

    def run(batch: Batch) -> list[WebhookDelivery]:
        with django_capture_on_commit_callbacks(execute=True):
            webhooks.handle_batch_terminal(batch)
        return list(WebhookDelivery.objects.filter(batch_id=batch.id))

    return run


def test_a_delivery_verifies_with_the_openai_sdk(
    owner: User, receiver: Receiver, made: Made
) -> None:
    endpoint = endpoint_for(owner, receiver.url)
    batch = ended_batch(owner)
    [delivery] = made(batch)

    assert webhooks.webhook_deliver(delivery.pk) == WebhookDelivery.Status.DELIVERED

    [sent] = receiver.received
    client = openai.OpenAI(api_key="x")
    event = client.webhooks.unwrap(sent.body, sent.headers, secret=endpoint.secret)
    assert event.type == "batch.completed"
    assert event.data.id == batch.id
    assert event.id == sent.headers["webhook-id"] == delivery.event_id
    assert sent.body == bytes(delivery.payload)
    assert endpoint.secret.startswith("whsec_")


def test_a_tampered_body_fails_the_sdks_verification(
    owner: User, receiver: Receiver, made: Made
) -> None:
    endpoint = endpoint_for(owner, receiver.url)
    [delivery] = made(ended_batch(owner))
    webhooks.webhook_deliver(delivery.pk)
    [sent] = receiver.received
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai.OpenAI(api_key="x").webhooks.unwrap(
            sent.body.replace(b"completed", b"cancelled"), sent.headers, secret=endpoint.secret
        )


def test_each_terminal_status_sends_its_event_to_subscribed_endpoints_only(
    owner: User, other_owner: User, receiver: Receiver, made: Made
) -> None:
    cancelled_only = endpoint_for(owner, receiver.url, ["batch.cancelled"])
    endpoint_for(other_owner, receiver.url, ["batch.cancelled"])
    disabled = endpoint_for(owner, receiver.url, ["batch.cancelled"])
    disabled.enabled = False
    disabled.save()

    assert made(ended_batch(owner, "completed")) == []
    [delivery] = made(ended_batch(owner, "cancelled"))
    assert delivery.endpoint == cancelled_only
    assert delivery.event_type == "batch.cancelled"
    assert OrmQ.objects.filter(key="cpu").count() == 1, "the delivery is queued on the CPU cluster"


def test_running_the_handler_again_sends_nothing_twice(
    owner: User, receiver: Receiver, made: Made
) -> None:
    endpoint_for(owner, receiver.url)
    batch = ended_batch(owner, "failed")
    first = made(batch)
    second = made(batch)
    assert [d.pk for d in first] == [d.pk for d in second]
    assert OrmQ.objects.count() == 1


def test_it_retries_with_growing_delays_until_the_receiver_recovers(
    owner: User,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    made: Made,
) -> None:
    endpoint = endpoint_for(owner, receiver.url)
    [delivery] = made(ended_batch(owner))
    receiver.statuses = [500, 503]
    # The scheduler hands due schedules to the cluster; run them in this process, and only ours.
    monkeypatch.setattr(Conf, "SYNC", True)
    Schedule.objects.all().delete()

    assert webhooks.webhook_deliver(delivery.pk) == WebhookDelivery.Status.RETRYING
    delays = []
    for _ in range(2):
        [retry] = Schedule.objects.filter(func="batches.webhooks.webhook_deliver")
        delays.append((retry.next_run - timezone.now()).total_seconds())
        Schedule.objects.filter(pk=retry.pk).update(next_run=timezone.now() - timedelta(seconds=1))
        scheduler()

    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.DELIVERED
    assert delivery.attempts == 3
    assert [a["status_code"] for a in delivery.attempt_log] == [500, 503, 200]
    assert "receiver is down" in delivery.attempt_log[0]["error"]
    # Base 10 s, equal jitter: the first wait is 5-10 s, the second 10-20 s.
    assert 4 <= delays[0] <= 10.5 and 9 <= delays[1] <= 20.5
    assert not Schedule.objects.filter(func="batches.webhooks.webhook_deliver").exists()
    assert len({r.headers["webhook-id"] for r in receiver.received}) == 1
    for sent in receiver.received:
        openai.OpenAI(api_key="x").webhooks.unwrap(sent.body, sent.headers, secret=endpoint.secret)
    assert BatchEvent.objects.filter(batch_id=delivery.batch_id, kind="webhook_delivered").exists()


def test_a_4xx_answer_fails_at_once(owner: User, receiver: Receiver, made: Made) -> None:
    endpoint_for(owner, receiver.url)
    [delivery] = made(ended_batch(owner))
    receiver.statuses = [410]
    assert webhooks.webhook_deliver(delivery.pk) == WebhookDelivery.Status.FAILED
    assert not Schedule.objects.filter(func="batches.webhooks.webhook_deliver").exists()


def test_a_network_error_is_retried(owner: User, made: Made) -> None:
    endpoint_for(owner, "http://127.0.0.1:9/closed-port")
    [delivery] = made(ended_batch(owner))
    assert webhooks.webhook_deliver(delivery.pk) == WebhookDelivery.Status.RETRYING
    delivery.refresh_from_db()
    assert delivery.last_status_code is None
    assert "ConnectionRefusedError" in delivery.last_error
    assert delivery.next_attempt_at is not None
    assert Schedule.objects.filter(func="batches.webhooks.webhook_deliver").count() == 1


def test_an_exhausted_delivery_can_be_sent_again_from_the_admin(
    owner: User,
    staff: User,
    receiver: Receiver,
    settings: SettingsWrapper,
    made: Made,
    django_capture_on_commit_callbacks: Any,
) -> None:
    settings.WEBHOOK_MAX_ATTEMPTS = 2
    endpoint_for(owner, receiver.url)
    [delivery] = made(ended_batch(owner))
    receiver.statuses = [500, 500]
    webhooks.webhook_deliver(delivery.pk)
    assert webhooks.webhook_deliver(delivery.pk) == WebhookDelivery.Status.FAILED

    staff.is_superuser = True
    staff.save()
    admin = Client()
    admin.force_login(staff)
    OrmQ.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        response = admin.post(
            "/admin/batches/webhookdelivery/",
            {"action": "retry_deliveries", "_selected_action": [delivery.pk]},
        )
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.status == WebhookDelivery.Status.PENDING
    assert OrmQ.objects.filter(key="cpu").count() == 1
    assert webhooks.webhook_deliver(delivery.pk, 2) == WebhookDelivery.Status.DELIVERED
    delivery.refresh_from_db()
    assert [a["status_code"] for a in delivery.attempt_log] == [500, 500, 200]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
    ],
)
def test_it_refuses_to_register_urls_that_reach_the_servers_own_network(
    api: APIClient, settings: SettingsWrapper, url: str
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    response = api.post(
        "/v1/webhook_endpoints",
        {"name": "n", "url": url, "event_types": ["batch.completed"]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "url"
    assert not WebhookEndpoint.objects.exists()


def test_it_refuses_to_send_to_an_address_that_became_private(
    owner: User,
    receiver: Receiver,
    settings: SettingsWrapper,
    made: Made,
) -> None:
    endpoint_for(owner, receiver.url)
    [delivery] = made(ended_batch(owner))
    settings.WEBHOOK_ALLOW_PRIVATE_TARGETS = False
    assert webhooks.webhook_deliver(delivery.pk) == WebhookDelivery.Status.FAILED
    delivery.refresh_from_db()
    assert "refused target" in delivery.last_error
    assert receiver.received == []


def test_endpoints_are_managed_through_openais_webhook_endpoint_api(
    api: APIClient, other_api: APIClient, receiver: Receiver
) -> None:
    created = api.post(
        "/v1/webhook_endpoints",
        {"name": "ci", "url": receiver.url, "event_types": ["batch.completed"]},
        format="json",
    )
    assert created.status_code == 200
    endpoint = WebhookEndpointWithSecret.model_validate(created.json())
    assert endpoint.signing_secret.startswith("whsec_")

    fetched = api.get(f"/v1/webhook_endpoints/{endpoint.id}").json()
    assert "signing_secret" not in fetched
    SdkWebhookEndpoint.model_validate(fetched)
    assert other_api.get(f"/v1/webhook_endpoints/{endpoint.id}").status_code == 404

    updated = api.post(
        f"/v1/webhook_endpoints/{endpoint.id}",
        {"event_types": ["batch.failed", "batch.expired"]},
        format="json",
    ).json()
    assert updated["event_types"] == ["batch.failed", "batch.expired"]

    rotated = api.post(
        f"/v1/webhook_endpoints/{endpoint.id}/rotate_secret",
        {"keep_old_secret_active_for_24_hours": True},
        format="json",
    ).json()
    assert rotated["signing_secret"] != endpoint.signing_secret
    row = WebhookEndpoint.objects.get(pk=endpoint.id)
    assert row.signing_secrets() == [rotated["signing_secret"], endpoint.signing_secret]

    listed = api.get("/v1/webhook_endpoints").json()
    assert listed["object"] == "list" and [e["id"] for e in listed["data"]] == [endpoint.id]
    deleted = api.delete(f"/v1/webhook_endpoints/{endpoint.id}").json()
    assert deleted == {"id": endpoint.id, "object": "webhook_endpoint.deleted", "deleted": True}


def test_it_rejects_event_types_it_does_not_send(api: APIClient, receiver: Receiver) -> None:
    response = api.post(
        "/v1/webhook_endpoints",
        {"name": "x", "url": receiver.url, "event_types": ["response.completed"]},
        format="json",
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"].startswith("event_types")


def test_after_a_rotation_that_keeps_the_old_secret_both_verify(
    owner: User, receiver: Receiver, made: Made
) -> None:
    endpoint = endpoint_for(owner, receiver.url)
    old_secret = endpoint.secret
    webhooks.webhook_endpoint_rotate_secret(endpoint=endpoint, keep_old_secret=True)
    [delivery] = made(ended_batch(owner))
    webhooks.webhook_deliver(delivery.pk)
    [sent] = receiver.received
    for secret in (old_secret, endpoint.secret):
        openai.OpenAI(api_key="x").webhooks.unwrap(sent.body, sent.headers, secret=secret)
