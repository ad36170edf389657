from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from curation import services
from curation.models import Item, Queue, Response

ANSWERS = {"category": "Billing", "urgency": "High", "needs_reply": "Yes"}


def _item(queue: Queue, custom_id: str = "ticket-0") -> Item:
    return queue.items.get(custom_id=custom_id)


def test_a_submission_must_answer_every_required_question(queue: Queue, reviewer: User) -> None:
    with pytest.raises(ValidationError) as caught:
        services.response_save(
            item=_item(queue), reviewer=reviewer, answers={"category": "Bug"}, status="submitted"
        )

    assert set(caught.value.message_dict) == {"urgency", "needs_reply"}
    assert not Response.objects.exists()


def test_a_draft_may_be_incomplete(queue: Queue, reviewer: User) -> None:
    response = services.response_save(
        item=_item(queue),
        reviewer=reviewer,
        answers={"category": "Bug", "summary": ""},
        status="draft",
    )

    assert response.status == Response.Status.DRAFT
    assert response.answers == {"category": "Bug"}
    assert _item(queue).submitted_count == 0


def test_submitting_counts_towards_completing_the_item(
    queue: Queue, reviewer: User, second_reviewer: User
) -> None:
    queue.required_submissions = 2
    queue.save()
    item = _item(queue)

    services.response_save(item=item, reviewer=reviewer, answers=ANSWERS, status="submitted")
    item.refresh_from_db()
    assert item.submitted_count == 1
    services.response_save(item=item, reviewer=second_reviewer, answers=ANSWERS, status="submitted")
    item.refresh_from_db()
    assert item.submitted_count == 2
    assert Item.objects.filter(pk=item.pk, submitted_count__gte=queue.required_submissions).exists()


def test_one_reviewer_has_one_response_per_item(queue: Queue, reviewer: User) -> None:
    item = _item(queue)
    services.response_save(item=item, reviewer=reviewer, answers={}, status="draft")
    first = services.response_save(
        item=item, reviewer=reviewer, answers=ANSWERS, status="submitted"
    )
    services.response_save(item=item, reviewer=reviewer, answers={}, status="discarded")

    assert Response.objects.count() == 1
    first.refresh_from_db()
    assert first.status == Response.Status.DISCARDED
    item.refresh_from_db()
    assert item.submitted_count == 0


def test_the_edited_output_is_kept_beside_the_original(queue: Queue, reviewer: User) -> None:
    item = _item(queue)
    original = item.outputs.get().text

    response = services.response_save(
        item=item,
        reviewer=reviewer,
        answers={},
        status="draft",
        edited_output='{"category": "Bug"}',
    )

    assert response.edited_output == '{"category": "Bug"}'
    assert item.outputs.get().text == original


def test_an_edit_equal_to_the_original_does_not_count_as_an_edit(
    queue: Queue, reviewer: User
) -> None:
    item = _item(queue)
    original = item.outputs.get().text

    response = services.response_save(
        item=item,
        reviewer=reviewer,
        answers={},
        status="draft",
        edited_output=original.replace("\n", "\r\n"),
    )

    assert response.edited_output == ""


def test_time_spent_adds_up_and_an_idle_tab_counts_for_at_most_half_an_hour(
    queue: Queue, reviewer: User
) -> None:
    item = _item(queue)
    services.response_save(
        item=item, reviewer=reviewer, answers={}, status="draft", elapsed_seconds=40
    )
    response = services.response_save(
        item=item, reviewer=reviewer, answers={}, status="draft", elapsed_seconds=10 * 3600
    )

    assert response.time_spent_seconds == 40 + services.MAX_SECONDS_PER_VISIT


def test_it_notes_when_a_reviewer_disagrees_with_the_model(queue: Queue, reviewer: User) -> None:
    item = _item(queue)  # the model said Billing / High / Yes

    agreeing = services.response_save(
        item=item, reviewer=reviewer, answers={**ANSWERS, "urgency": " high "}, status="submitted"
    )
    assert not agreeing.disagrees_with_model
    disagreeing = services.response_save(
        item=item, reviewer=reviewer, answers={**ANSWERS, "urgency": "Low"}, status="submitted"
    )
    assert disagreeing.disagrees_with_model


def test_it_notes_when_reviewers_disagree(
    queue: Queue, reviewer: User, second_reviewer: User
) -> None:
    item = _item(queue)
    services.response_save(item=item, reviewer=reviewer, answers=ANSWERS, status="submitted")
    services.response_save(
        item=item,
        reviewer=second_reviewer,
        answers={**ANSWERS, "category": "Bug"},
        status="submitted",
    )
    item.refresh_from_db()
    assert item.reviewers_disagree

    services.response_save(item=item, reviewer=second_reviewer, answers=ANSWERS, status="submitted")
    item.refresh_from_db()
    assert not item.reviewers_disagree


def test_gold_star_records_who_and_when_and_can_be_removed(queue: Queue, reviewer: User) -> None:
    item = _item(queue)

    services.item_set_gold(item=item, user=reviewer, gold=True)
    item.refresh_from_db()
    assert item.gold_starred_by == reviewer
    assert item.gold_starred_at is not None
    starred_at = item.gold_starred_at

    services.item_set_gold(item=item, user=reviewer, gold=True)
    item.refresh_from_db()
    assert item.gold_starred_at == starred_at

    services.item_set_gold(item=item, user=reviewer, gold=False)
    unstarred = Item.objects.get(pk=item.pk)
    assert (unstarred.gold_starred_at, unstarred.gold_starred_by) == (None, None)
