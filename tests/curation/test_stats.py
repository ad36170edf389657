from __future__ import annotations

from django.contrib.auth.models import User

from curation import services
from curation.models import Queue
from curation.stats import queue_stats

ANSWERS = {"category": "Billing", "urgency": "High", "needs_reply": "Yes"}


def test_stats_count_progress_agreement_and_time(
    queue: Queue, reviewer: User, second_reviewer: User
) -> None:
    first = queue.items.get(custom_id="ticket-0")  # the model: Billing / High / Yes
    second = queue.items.get(custom_id="ticket-1")  # the model: Bug / Normal / Yes
    services.response_save(
        item=first, reviewer=reviewer, answers=ANSWERS, status="submitted", elapsed_seconds=30
    )
    services.response_save(
        item=first,
        reviewer=second_reviewer,
        answers={**ANSWERS, "urgency": "Low"},
        status="submitted",
        elapsed_seconds=90,
    )
    services.response_save(
        item=second, reviewer=reviewer, answers=ANSWERS, status="submitted", elapsed_seconds=60
    )
    services.response_save(
        item=queue.items.get(custom_id="ticket-2"), reviewer=reviewer, answers={}, status="draft"
    )
    services.item_set_gold(item=first, user=reviewer, gold=True)

    stats = queue_stats(queue)

    assert (stats.total, stats.complete, stats.gold) == (4, 2, 1)
    assert stats.percent_complete == 50
    assert stats.median_seconds == 60
    rita, rob = stats.reviewers
    assert (rita.username, rita.submitted, rita.drafts, rita.median_seconds) == ("rita", 2, 1, 45)
    assert (rob.username, rob.submitted, rob.median_seconds) == ("rob", 1, 90)
    by_key = {q.key: q for q in stats.questions}
    assert by_key["category"].between_reviewers.percent == 100
    assert by_key["urgency"].between_reviewers.percent == 0
    assert by_key["urgency"].between_reviewers.compared == 1
    # category: 2 of 3 answers match the model (ticket-1's Bug was corrected to Billing).
    model = by_key["category"].with_models["tiny-chat"]
    assert (model.agreeing, model.compared) == (2, 3)
    assert by_key["summary"].between_reviewers.percent is None


def test_stats_of_an_untouched_queue(queue: Queue) -> None:
    stats = queue_stats(queue)

    assert (stats.total, stats.complete, stats.median_seconds, stats.reviewers) == (4, 0, None, [])
