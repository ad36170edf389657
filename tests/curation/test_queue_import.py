from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test.utils import CaptureQueriesContext

from batches.models import Batch
from curation import handlers, services
from curation.models import ConquestSchema, Item, ItemOutput, Queue
from curation.schemas import schema_import
from tests.curation.factories import (
    REFERENCE_SCHEMAS,
    TICKETS,
    chat_request,
    completed_batch,
    ticket_answer,
    ticket_batch,
)


def test_each_custom_id_becomes_an_item_with_its_data_values(queue: Queue) -> None:
    items = list(queue.items.order_by("position"))

    assert [item.custom_id for item in items] == ["ticket-0", "ticket-1", "ticket-2", "ticket-3"]
    first = items[0]
    assert first.data["subject"] == "Charged twice this month"
    assert first.data["customer"] == "Ada Lovelace"
    assert first.data["history"] == TICKETS[0]["history"]
    assert first.prompt is not None
    assert first.prompt[1]["role"] == "user"
    assert "Charged twice" in first.search_text


def test_the_model_answers_are_parsed_and_matched_to_the_options(queue: Queue) -> None:
    output = ItemOutput.objects.get(item__custom_id="ticket-0")

    assert output.model == "tiny-chat"
    assert output.answers == {
        "category": "Billing",
        "urgency": "High",  # "high" matched to the option's spelling
        "needs_reply": "Yes",  # true -> the first of Yes/No
        "tags": ["refund"],
        "summary": "Refund a double charge",
    }


def test_a_fenced_json_answer_is_parsed(queue: Queue) -> None:
    output = ItemOutput.objects.get(item__custom_id="ticket-1")

    assert output.parsed is not None
    assert output.parsed["category"] == "Bug"
    assert output.answers["urgency"] == "Normal"


def test_output_that_is_not_json_is_kept_raw_without_answers(queue: Queue) -> None:
    output = ItemOutput.objects.get(item__custom_id="ticket-2")

    assert output.text == "I think this is a feature request."
    assert output.parsed is None
    assert output.answers == {}


def test_a_failed_request_becomes_an_output_with_its_error(queue: Queue) -> None:
    output = ItemOutput.objects.get(item__custom_id="ticket-3")

    assert output.error == {
        "code": "context_length_exceeded",
        "message": "The prompt is longer than the model's context.",
    }
    assert output.text == ""


def test_importing_a_batch_again_adds_nothing(queue: Queue) -> None:
    batch = queue.queue_batches.get().batch

    services.queue_add_batch(queue=queue, batch=batch)

    assert queue.items.count() == 4
    assert ItemOutput.objects.filter(item__queue=queue).count() == 4
    assert queue.queue_batches.count() == 1


def test_batches_of_two_models_on_the_same_inputs_are_joined_by_custom_id(
    owner: User, triage_schema: ConquestSchema
) -> None:
    first = ticket_batch(owner, model="small")
    requests = [chat_request(f"ticket-{i}", t, model="large") for i, t in enumerate(TICKETS)]
    second = completed_batch(
        owner,
        requests,
        {"ticket-1": ticket_answer(category="Billing"), "ticket-0": ticket_answer(urgency="Low")},
        model="large",
    )

    queue = services.queue_create(schema=triage_schema, batches=[first, second])

    assert queue.items.count() == 4
    item = queue.items.get(custom_id="ticket-0")
    assert list(item.outputs.values_list("model", "position")) == [("small", 0), ("large", 1)]
    assert queue.name == "Support ticket triage: small, large"


def test_only_completed_batches_can_make_a_queue(
    owner: User, triage_schema: ConquestSchema
) -> None:
    batch = ticket_batch(owner, status=Batch.Status.CANCELLED)

    with pytest.raises(services.CurationError, match="cancelled"):
        services.queue_create(schema=triage_schema, batches=[batch])
    assert Queue.objects.count() == 0


def test_a_batch_whose_every_request_failed_still_imports(
    owner: User, triage_schema: ConquestSchema
) -> None:
    requests = [chat_request("a", TICKETS[0]), chat_request("b", TICKETS[1])]
    batch = completed_batch(owner, requests, {"a": None, "b": None})
    assert batch.output_file is None

    queue = services.queue_create(schema=triage_schema, batches=[batch])

    assert queue.items.count() == 2
    assert ItemOutput.objects.filter(item__queue=queue, error__isnull=False).count() == 2


def test_data_sources_can_name_where_their_value_comes_from(owner: User) -> None:
    schema, _ = schema_import(
        data={
            "id": "paths",
            "name": "Paths",
            "dataSources": [
                {"id": "question", "name": "Q", "source": "request", "path": "messages.-1.content"},
                {"id": "team", "name": "Team", "source": "metadata"},
                {"id": "tokens", "name": "T", "source": "response", "path": "usage.total_tokens"},
                {"id": "verdict", "name": "V", "source": "output", "path": "result.verdict"},
                {"id": "chat", "name": "Chat", "type": "chat"},
            ],
            "questions": [{"id": "ok", "text": "OK?", "type": "boolean"}],
        }
    )
    batch = completed_batch(
        owner,
        [chat_request("x", "Is the sky blue?")],
        {"x": json.dumps({"result": {"verdict": "yes"}})},
        metadata={"team": "search"},
    )

    queue = services.queue_create(schema=schema, batches=[batch])

    item = queue.items.get()
    assert item.data["question"] == "Is the sky blue?"
    assert item.data["team"] == "search"
    assert item.data["tokens"] == 15
    assert item.data["verdict"] == "yes"
    assert item.data["chat"][0] == {"role": "system", "content": "Answer in JSON."}


def test_a_reference_schema_reads_its_values_from_a_json_user_message(owner: User) -> None:
    schema, _ = schema_import(
        data=json.loads((REFERENCE_SCHEMAS / "candidate_evaluation.json").read_text())
    )
    candidate = {
        "name": "Ada",
        "role": "Staff Engineer",
        "education": [{"degree": "BSc", "institution": "Cambridge"}],
        "work_history": [{"title": "Engineer", "company": "Acme"}],
    }
    answer = {"recommendation": "strong yes", "trajectory": "Strong", "is_software_engineer": True}
    batch = completed_batch(owner, [chat_request("c1", candidate)], {"c1": json.dumps(answer)})

    queue = services.queue_create(schema=schema, batches=[batch])

    item = queue.items.get()
    assert item.data == candidate
    assert item.outputs.get().answers == {
        "recommendation": "Strong Yes",
        "trajectory": "Strong",
        "is_software_engineer": "Yes",
    }


def test_importing_many_results_uses_a_bounded_number_of_queries(
    owner: User, triage_schema: ConquestSchema
) -> None:
    count = 3_000
    requests = [chat_request(f"r{i}", TICKETS[i % 4]) for i in range(count)]
    outputs: dict[str, str | None] = {
        f"r{i}": ticket_answer(category="Bug", urgency="Low") for i in range(count)
    }
    batch = completed_batch(owner, requests, outputs)

    with CaptureQueriesContext(connection) as queries:
        queue = services.queue_create(schema=triage_schema, batches=[batch])

    assert queue.items.count() == count
    assert ItemOutput.objects.filter(item__queue=queue).count() == count
    # Chunks of 1,000 lines, one multi-row statement per table and chunk: never one per line.
    assert len(queries) < 40


class TestTheResultHandler:
    def _batch(self, owner: User, **metadata: str) -> Batch:
        return ticket_batch(owner, metadata=metadata)

    def test_it_makes_a_queue_when_the_metadata_names_a_schema(
        self, owner: User, triage_schema: ConquestSchema
    ) -> None:
        batch = self._batch(owner, curation_schema="ticket_triage")

        handlers.import_batch(batch)

        queue = Queue.objects.get()
        assert queue.schema == triage_schema
        assert queue.items.count() == 4
        assert queue.created_by == owner

    def test_it_uses_the_latest_version_of_the_schema(
        self, owner: User, triage_schema: ConquestSchema
    ) -> None:
        from curation.schemas import schema_to_dict

        newer = schema_to_dict(triage_schema) | {"version": "2.0.0"}
        newer_schema, _ = schema_import(data=newer)

        handlers.import_batch(self._batch(owner, curation_schema="ticket_triage"))

        assert Queue.objects.get().schema == newer_schema

    def test_calling_it_again_after_a_retry_duplicates_nothing(
        self, owner: User, triage_schema: ConquestSchema
    ) -> None:
        batch = self._batch(owner, curation_schema="ticket_triage")

        handlers.import_batch(batch)
        handlers.import_batch(batch)

        assert Queue.objects.count() == 1
        assert Item.objects.count() == 4
        assert ItemOutput.objects.count() == 4

    def test_batches_naming_the_same_queue_are_compared_in_it(
        self, owner: User, triage_schema: ConquestSchema
    ) -> None:
        first = ticket_batch(
            owner,
            model="small",
            metadata={"curation_schema": "ticket_triage", "curation_queue": "AB"},
        )
        second = ticket_batch(
            owner,
            model="large",
            metadata={"curation_schema": "ticket_triage", "curation_queue": "AB"},
        )

        handlers.import_batch(first)
        handlers.import_batch(second)

        queue = Queue.objects.get()
        assert queue.name == "AB"
        assert set(ItemOutput.objects.values_list("model", flat=True)) == {"small", "large"}
        assert Item.objects.count() == 4

    @pytest.mark.parametrize(
        ("metadata", "status"),
        [
            ({}, Batch.Status.COMPLETED),
            ({"other": "x"}, Batch.Status.COMPLETED),
            ({"curation_schema": "not_imported"}, Batch.Status.COMPLETED),
            ({"curation_schema": "ticket_triage"}, Batch.Status.FAILED),
        ],
    )
    def test_it_leaves_other_batches_alone(
        self,
        owner: User,
        triage_schema: ConquestSchema,
        metadata: dict[str, Any],
        status: str,
    ) -> None:
        batch = ticket_batch(owner, metadata=metadata or None, status=status)

        handlers.import_batch(batch)

        assert Queue.objects.count() == 0
