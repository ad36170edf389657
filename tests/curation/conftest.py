"""Personas and queues of the curation tests."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from curation import services
from curation.models import REVIEWER_GROUP, ConquestSchema, Queue
from curation.schemas import schema_import
from tests.curation.factories import EXAMPLE_SCHEMAS, ticket_batch


def _reviewer(username: str) -> User:
    user = User.objects.create_user(username, password=f"{username}-password-1")
    user.groups.add(Group.objects.get_or_create(name=REVIEWER_GROUP)[0])
    return user


@pytest.fixture
def reviewer(db: None) -> User:
    return _reviewer("rita")


@pytest.fixture
def second_reviewer(db: None) -> User:
    return _reviewer("rob")


@pytest.fixture
def outsider(db: None) -> User:
    """Logged in, but not a reviewer."""
    return User.objects.create_user("olga", password="olga-password-1")


@pytest.fixture
def reviewer_client(reviewer: User) -> Client:
    client = Client()
    client.force_login(reviewer)
    return client


@pytest.fixture
def staff_client(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def triage_schema(db: None) -> ConquestSchema:
    data = json.loads((EXAMPLE_SCHEMAS / "ticket_triage.json").read_text())
    return schema_import(data=data)[0]


@pytest.fixture
def queue(owner: User, triage_schema: ConquestSchema) -> Queue:
    batch = ticket_batch(owner)
    return services.queue_create(schema=triage_schema, batches=[batch], name="Tickets")
