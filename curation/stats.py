"""Per-queue statistics: progress per reviewer, agreement per question, time per item."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from statistics import median
from typing import Any

from django.db.models import Count

from curation.models import Item, ItemOutput, Queue, Response, comparable, item_is_complete_q


@dataclass
class Agreement:
    agreeing: int = 0
    compared: int = 0

    def add(self, same: bool) -> None:
        self.compared += 1
        self.agreeing += int(same)

    @property
    def percent(self) -> float | None:
        return 100.0 * self.agreeing / self.compared if self.compared else None


@dataclass
class ReviewerStats:
    username: str
    submitted: int = 0
    drafts: int = 0
    discarded: int = 0
    median_seconds: float | None = None

    @property
    def done(self) -> int:
        return self.submitted + self.discarded


@dataclass
class QuestionStats:
    key: str
    text: str
    between_reviewers: Agreement = field(default_factory=Agreement)
    with_models: dict[str, Agreement] = field(default_factory=dict)


@dataclass
class QueueStats:
    total: int
    complete: int
    gold: int
    median_seconds: float | None
    reviewers: list[ReviewerStats]
    questions: list[QuestionStats]
    models: list[str]

    @property
    def percent_complete(self) -> float:
        return 100.0 * self.complete / self.total if self.total else 0.0


def queue_stats(queue: Queue) -> QueueStats:
    items = Item.objects.filter(queue=queue)
    responses = Response.objects.filter(item__queue=queue)

    reviewers: dict[str, ReviewerStats] = {}
    for username, status, count in (
        responses.values_list("reviewer__username", "status").annotate(n=Count("pk")).order_by()
    ):
        row = reviewers.setdefault(username, ReviewerStats(username=username))
        if status == Response.Status.SUBMITTED:
            row.submitted = count
        elif status == Response.Status.DRAFT:
            row.drafts = count
        else:
            row.discarded = count

    times: dict[str, list[float]] = defaultdict(list)
    all_times: list[float] = []
    answers_by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for username, item_id, seconds, answers in (
        responses.submitted()
        .values_list("reviewer__username", "item_id", "time_spent_seconds", "answers")
        .iterator(chunk_size=2_000)
    ):
        times[username].append(seconds)
        all_times.append(seconds)
        answers_by_item[item_id].append(answers)
    for username, values in times.items():
        reviewers[username].median_seconds = median(values)

    model_answers: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
    for item_id, model, answers in (
        ItemOutput.objects.filter(
            item__queue=queue, item__submitted_count__gt=0, error__isnull=True
        )
        .order_by("position")
        .values_list("item_id", "model", "answers")
        .iterator(chunk_size=2_000)
    ):
        model_answers[item_id].setdefault(model, answers)
    models = list(
        dict.fromkeys(queue.queue_batches.order_by("position").values_list("model", flat=True))
    )

    questions = [
        QuestionStats(key=q.key, text=q.text, with_models={m: Agreement() for m in models})
        for q in queue.schema.questions.all()
    ]
    for item_id, all_answers in answers_by_item.items():
        for stats in questions:
            given = [comparable(a[stats.key]) for a in all_answers if stats.key in a]
            for index, first in enumerate(given):
                for second in given[index + 1 :]:
                    stats.between_reviewers.add(first == second)
            for model, suggestions in model_answers.get(item_id, {}).items():
                if stats.key not in suggestions:
                    continue
                suggested = comparable(suggestions[stats.key])
                agreement = stats.with_models.setdefault(model, Agreement())
                for answer in given:
                    agreement.add(answer == suggested)

    return QueueStats(
        total=items.count(),
        complete=items.filter(item_is_complete_q()).count(),
        gold=items.filter(gold_starred_at__isnull=False).count(),
        median_seconds=median(all_times) if all_times else None,
        reviewers=sorted(reviewers.values(), key=lambda row: (-row.done, row.username)),
        questions=questions,
        models=models,
    )
