from __future__ import annotations

import pytest
from django.contrib.auth.models import User

from curation import services
from curation.filters import ItemFilterForm
from curation.models import Queue

ANSWERS = {
    "category": "Billing",
    "urgency": "High",
    "needs_reply": "Yes",
    "tags": ["refund", "outage"],
}


def _ids(queue: Queue, user: User, **params: str) -> list[str]:
    form = ItemFilterForm(params, queue=queue)
    assert form.is_valid(), form.errors
    return list(
        form.apply(queue.items.all(), user=user)
        .order_by("position")
        .values_list("custom_id", flat=True)
    )


@pytest.fixture
def reviewed(queue: Queue, reviewer: User, second_reviewer: User) -> Queue:
    items = {item.custom_id: item for item in queue.items.all()}
    services.response_save(
        item=items["ticket-0"], reviewer=reviewer, answers=ANSWERS, status="submitted"
    )
    services.response_save(
        item=items["ticket-1"],
        reviewer=reviewer,
        answers={**ANSWERS, "urgency": "Low", "tags": ["usability"]},
        status="submitted",
    )
    services.response_save(
        item=items["ticket-1"], reviewer=second_reviewer, answers=ANSWERS, status="submitted"
    )
    services.response_save(item=items["ticket-2"], reviewer=reviewer, answers={}, status="draft")
    services.response_save(
        item=items["ticket-3"], reviewer=reviewer, answers={}, status="discarded"
    )
    services.item_set_gold(item=items["ticket-2"], user=reviewer, gold=True)
    return queue


def test_no_filter_lists_every_item(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer) == ["ticket-0", "ticket-1", "ticket-2", "ticket-3"]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("todo", ["ticket-2"]),
        ("open", ["ticket-2", "ticket-3"]),
        ("complete", ["ticket-0", "ticket-1"]),
        ("draft", ["ticket-2"]),
        ("submitted", ["ticket-0", "ticket-1"]),
        ("discarded", ["ticket-3"]),
        ("failed", ["ticket-3"]),
    ],
)
def test_it_filters_by_status(
    reviewed: Queue, reviewer: User, status: str, expected: list[str]
) -> None:
    assert _ids(reviewed, reviewer, status=status) == expected


def test_to_do_is_per_reviewer(reviewed: Queue, second_reviewer: User) -> None:
    reviewed.required_submissions = 2
    reviewed.save()

    assert _ids(reviewed, second_reviewer, status="todo") == ["ticket-0", "ticket-2", "ticket-3"]


def test_it_filters_by_gold(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer, gold="gold") == ["ticket-2"]
    assert _ids(reviewed, reviewer, gold="not_gold") == ["ticket-0", "ticket-1", "ticket-3"]


def test_it_filters_by_a_reviewers_answer(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer, question="urgency", value="low") == ["ticket-1"]
    assert _ids(reviewed, reviewer, question="tags", value="usability") == ["ticket-1"]
    assert _ids(reviewed, reviewer, question="tags", value="outage") == ["ticket-0", "ticket-1"]


def test_it_filters_by_the_models_answer(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer, question="category", value="Bug", answer_by="model") == [
        "ticket-1"
    ]


def test_it_filters_by_model(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer, model="tiny-chat") == ["ticket-0", "ticket-1", "ticket-2"]


def test_it_filters_by_disagreement(reviewed: Queue, reviewer: User) -> None:
    # ticket-0: the reviewer added a tag; ticket-1: the model said Bug, both reviewers Billing.
    assert _ids(reviewed, reviewer, disagreement="model") == ["ticket-0", "ticket-1"]
    assert _ids(reviewed, reviewer, disagreement="reviewers") == ["ticket-1"]


def test_text_search_looks_in_data_and_outputs(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer, q="DARK MODE") == ["ticket-2"]
    assert _ids(reviewed, reviewer, q="feature request") == ["ticket-2"]
    assert _ids(reviewed, reviewer, q="nothing like this") == []


def test_filters_combine(reviewed: Queue, reviewer: User) -> None:
    assert _ids(reviewed, reviewer, status="complete", q="export") == ["ticket-1"]


def test_the_filter_travels_as_a_querystring(reviewed: Queue) -> None:
    form = ItemFilterForm({"status": "todo", "q": "a b", "gold": ""}, queue=reviewed)

    assert form.querystring() == "status=todo&q=a+b"
    assert form.params() == {"status": "todo", "q": "a b"}
