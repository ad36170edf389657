from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from curation import services
from curation.filters import ItemFilterForm
from curation.models import BulkAction, Item, Queue, Response

ANSWERS = {"category": "Billing", "urgency": "High", "needs_reply": "Yes"}


def _filtered(queue: Queue, user: User, **params: str) -> QuerySet[Item]:
    return ItemFilterForm(params, queue=queue).apply(queue.items.all(), user=user)


def test_bulk_gold_stars_every_item_of_the_filter_and_undo_removes_only_those(
    queue: Queue, reviewer: User, staff: User
) -> None:
    already = queue.items.get(custom_id="ticket-0")
    services.item_set_gold(item=already, user=staff, gold=True)

    action = services.bulk_action_apply(
        queue=queue, user=reviewer, kind="gold", items=queue.items.all(), filters={}
    )

    assert action.affected == 3
    assert queue.items.filter(gold_starred_at__isnull=False).count() == 4
    services.bulk_action_undo(action=action, user=reviewer)
    assert list(queue.items.filter(gold_starred_at__isnull=False)) == [already]
    already.refresh_from_db()
    assert already.gold_starred_by == staff
    action.refresh_from_db()
    assert action.undone_at is not None


def test_bulk_actions_reach_past_the_first_page(queue: Queue, reviewer: User) -> None:
    from curation import views

    assert views.ITEMS_PER_PAGE < 1_000  # the filter, not the page, is what counts
    action = services.bulk_action_apply(
        queue=queue,
        user=reviewer,
        kind="gold",
        items=_filtered(queue, reviewer, q="ticket"),
        filters={"q": "ticket"},
    )
    assert action.affected == queue.items.count()


def test_undoing_a_bulk_unstar_restores_who_starred_and_when(
    queue: Queue, reviewer: User, staff: User
) -> None:
    item = queue.items.get(custom_id="ticket-1")
    services.item_set_gold(item=item, user=staff, gold=True)
    item.refresh_from_db()
    starred_at = item.gold_starred_at

    action = services.bulk_action_apply(
        queue=queue, user=reviewer, kind="ungold", items=queue.items.all(), filters={}
    )
    assert action.affected == 1
    assert not queue.items.filter(gold_starred_at__isnull=False).exists()

    services.bulk_action_undo(action=action, user=reviewer)
    item.refresh_from_db()
    assert (item.gold_starred_by, item.gold_starred_at) == (staff, starred_at)


def test_bulk_discard_discards_my_responses_and_undo_brings_them_back(
    queue: Queue, reviewer: User, second_reviewer: User
) -> None:
    submitted_item = queue.items.get(custom_id="ticket-0")
    services.response_save(
        item=submitted_item, reviewer=reviewer, answers=ANSWERS, status="submitted"
    )
    services.response_save(
        item=submitted_item, reviewer=second_reviewer, answers=ANSWERS, status="submitted"
    )

    action = services.bulk_action_apply(
        queue=queue, user=reviewer, kind="discard", items=queue.items.all(), filters={}
    )

    assert action.affected == 4
    mine = Response.objects.filter(reviewer=reviewer)
    assert set(mine.values_list("status", flat=True)) == {"discarded"}
    assert mine.count() == 4
    # The other reviewer's submission is theirs: a bulk action never touches it.
    assert Response.objects.get(reviewer=second_reviewer).status == "submitted"
    submitted_item.refresh_from_db()
    assert submitted_item.submitted_count == 1

    services.bulk_action_undo(action=action, user=reviewer)

    assert list(Response.objects.filter(reviewer=reviewer).values_list("status", flat=True)) == [
        "submitted"
    ]
    submitted_item.refresh_from_db()
    assert submitted_item.submitted_count == 2


def test_a_bulk_action_is_undone_once_and_only_by_its_author(
    queue: Queue, reviewer: User, second_reviewer: User
) -> None:
    action = services.bulk_action_apply(
        queue=queue, user=reviewer, kind="gold", items=queue.items.all(), filters={}
    )

    try:
        services.bulk_action_undo(action=action, user=second_reviewer)
    except services.CurationError as error:
        assert "Only the person" in str(error)
    else:
        raise AssertionError("another reviewer undid the action")
    services.bulk_action_undo(action=action, user=reviewer)
    try:
        services.bulk_action_undo(action=action, user=reviewer)
    except services.CurationError as error:
        assert "already undone" in str(error)
    else:
        raise AssertionError("undone twice")
    assert BulkAction.objects.get().undone_at is not None
