"""Writes and workflows of the curation workbench: queues, responses, gold stars, bulk actions."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, OuterRef, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from batches.models import Batch
from curation import importing
from curation.models import (
    BulkAction,
    ConquestSchema,
    Item,
    ItemOutput,
    Queue,
    QueueBatch,
    Response,
    comparable,
)

logger = logging.getLogger(__name__)

# One visit of an item page counts for at most this long: a tab left open overnight is not work.
MAX_SECONDS_PER_VISIT = 30 * 60
# Rows per UPDATE ... WHERE id IN (...): below SQLite's bound on query parameters.
ID_CHUNK = 5_000


class CurationError(Exception):
    """A request the workbench refuses; the message is meant for the person who made it."""


def _id_chunks(ids: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(ids), ID_CHUNK):
        yield ids[start : start + ID_CHUNK]


# --- Queues -----------------------------------------------------------------------------------


def queue_create(
    *,
    schema: ConquestSchema,
    batches: Iterable[Batch],
    name: str = "",
    description: str = "",
    required_submissions: int = 1,
    user: Any = None,
) -> Queue:
    """A queue over completed batches; the first batch's model is the reference model."""
    batch_list = list(batches)
    if not batch_list:
        raise CurationError("Choose at least one completed batch.")
    for batch in batch_list:
        _check_completed(batch)
    if required_submissions < 1:
        raise CurationError("An item needs at least one submitted response to be complete.")
    with transaction.atomic():
        queue = Queue.objects.create(
            name=name.strip() or _default_queue_name(schema, batch_list),
            description=description,
            schema=schema,
            required_submissions=required_submissions,
            created_by=user if getattr(user, "pk", None) else None,
        )
        for batch in batch_list:
            queue_add_batch(queue=queue, batch=batch)
    return queue


def _default_queue_name(schema: ConquestSchema, batches: list[Batch]) -> str:
    models = ", ".join(dict.fromkeys(batch.model or batch.id for batch in batches))
    return f"{schema.name}: {models}"[:200]


def _check_completed(batch: Batch) -> None:
    if batch.status != Batch.Status.COMPLETED:
        raise CurationError(
            f"Batch {batch.id} is {batch.status}; only completed batches can be reviewed."
        )


def queue_add_batch(*, queue: Queue, batch: Batch) -> QueueBatch:
    """Import a completed batch into a queue; running it again adds nothing twice."""
    _check_completed(batch)
    started = timezone.now()
    with transaction.atomic():
        link = QueueBatch.objects.filter(queue=queue, batch=batch).first()
        if link is None:
            link = QueueBatch.objects.create(
                queue=queue,
                batch=batch,
                position=QueueBatch.objects.filter(queue=queue).count(),
                model=batch.model,
            )
        importing.import_requests(queue=queue, batch=batch)
        importing.import_results(queue=queue, batch=batch, position=link.position)
        link.imported_at = timezone.now()
        link.save(update_fields=["imported_at"])
    logger.info(
        "queue %s: imported batch %s in %.1f s",
        queue.pk,
        batch.id,
        (timezone.now() - started).total_seconds(),
    )
    return link


def queue_import_from_metadata(*, batch: Batch) -> Queue | None:
    """Create or extend the queue a completed batch's metadata asks for.

    ``metadata.curation_schema`` names a schema (its latest version); ``metadata.curation_queue``
    optionally names the queue, so batches of several models on the same inputs share one queue.
    """
    metadata = batch.metadata if isinstance(batch.metadata, dict) else {}
    key = metadata.get("curation_schema")
    if not key or batch.status != Batch.Status.COMPLETED:
        return None
    schema = ConquestSchema.objects.latest_version(str(key))
    if schema is None:
        logger.warning("batch %s names curation schema %r, which is not imported", batch.id, key)
        return None
    existing = Queue.objects.filter(queue_batches__batch=batch).first()
    if existing is not None:
        queue_add_batch(queue=existing, batch=batch)
        return existing
    queue_name = str(metadata.get("curation_queue") or "").strip()
    if queue_name:
        with transaction.atomic():
            named = (
                Queue.objects.select_for_update()
                .filter(name=queue_name, schema__key=schema.key)
                .order_by("-id")
                .first()
            )
            if named is not None:
                queue_add_batch(queue=named, batch=batch)
                return named
            return queue_create(schema=schema, batches=[batch], name=queue_name, user=batch.owner)
    return queue_create(schema=schema, batches=[batch], user=batch.owner)


# --- Responses --------------------------------------------------------------------------------


def _reference_output(item: Item, base_output: ItemOutput | None) -> ItemOutput | None:
    if base_output is not None:
        return base_output
    return item.outputs.order_by("position").first()


def answers_disagree(first: dict[str, Any], second: dict[str, Any]) -> bool:
    """True when a question both answered has different answers."""
    return any(
        key in second and comparable(value) != comparable(second[key])
        for key, value in first.items()
    )


def response_save(
    *,
    item: Item,
    reviewer: Any,
    answers: dict[str, Any],
    status: str,
    edited_output: str = "",
    notes: str = "",
    base_output: ItemOutput | None = None,
    elapsed_seconds: float = 0.0,
) -> Response:
    """Save a reviewer's draft, submission or discard of an item.

    A submission must answer every required question. An edited output equal to the original
    is stored as not edited, so "edited" always means changed.
    """
    if status not in Response.Status.values:
        raise CurationError(f"Unknown response status {status!r}.")
    questions = list(item.queue.schema.questions.all())
    answers = {key: value for key, value in answers.items() if value not in (None, "", [])}
    if status == Response.Status.SUBMITTED:
        missing = {
            q.key: "This question needs an answer."
            for q in questions
            if q.required and q.key not in answers
        }
        if missing:
            raise ValidationError(missing)
    reference = _reference_output(item, base_output)
    original = reference.text if reference is not None else ""
    if edited_output.replace("\r\n", "\n") == original.replace("\r\n", "\n"):
        edited_output = ""
    now = timezone.now()
    with transaction.atomic():
        response, _ = Response.objects.select_for_update().get_or_create(
            item=item, reviewer=reviewer, defaults={"created_at": now}
        )
        response.answers = answers
        response.status = status
        response.edited_output = edited_output
        response.notes = notes
        response.base_output = base_output
        response.time_spent_seconds += min(max(elapsed_seconds, 0.0), MAX_SECONDS_PER_VISIT)
        response.disagrees_with_model = reference is not None and answers_disagree(
            answers, reference.answers
        )
        response.updated_at = now
        if status == Response.Status.SUBMITTED:
            response.submitted_at = now
        response.save()
        items_recount(item_ids=[item.pk])
    return response


def items_recount(*, item_ids: Sequence[int]) -> None:
    """Refresh the submitted count and the reviewers' disagreement flag of these items."""
    submitted = Response.objects.filter(status=Response.Status.SUBMITTED)
    count = (
        submitted.filter(item=OuterRef("pk"))
        .order_by()
        .values("item")
        .annotate(n=Count("pk"))
        .values("n")
    )
    for chunk in _id_chunks(list(item_ids)):
        Item.objects.filter(pk__in=chunk).update(
            submitted_count=Coalesce(Subquery(count), Value(0))
        )
        by_item: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for item_id, answers in submitted.filter(item_id__in=chunk).values_list(
            "item_id", "answers"
        ):
            by_item[item_id].append(answers)
        disagreeing = [
            item_id
            for item_id, all_answers in by_item.items()
            if any(
                answers_disagree(first, second)
                for index, first in enumerate(all_answers)
                for second in all_answers[index + 1 :]
            )
        ]
        Item.objects.filter(pk__in=chunk).exclude(pk__in=disagreeing).update(
            reviewers_disagree=False
        )
        Item.objects.filter(pk__in=disagreeing).update(reviewers_disagree=True)


# --- Gold stars -------------------------------------------------------------------------------


def item_set_gold(*, item: Item, user: Any, gold: bool) -> Item:
    if gold and item.gold_starred_at is None:
        item.gold_starred_at = timezone.now()
        item.gold_starred_by = user
    elif not gold:
        item.gold_starred_at = None
        item.gold_starred_by = None
    item.save(update_fields=["gold_starred_at", "gold_starred_by"])
    return item


# --- Bulk actions -----------------------------------------------------------------------------


def bulk_action_apply(
    *, queue: Queue, user: Any, kind: str, items: QuerySet[Item], filters: dict[str, Any]
) -> BulkAction:
    """Apply an action to every item of a filter (not just one page), recording how to undo it."""
    if kind not in BulkAction.Kind.values:
        raise CurationError(f"Unknown bulk action {kind!r}.")
    items = items.filter(queue=queue)
    now = timezone.now()
    with transaction.atomic():
        action = BulkAction.objects.create(
            queue=queue, user=user, kind=kind, filters=filters, created_at=now
        )
        if kind == BulkAction.Kind.GOLD:
            ids = list(items.filter(gold_starred_at__isnull=True).values_list("pk", flat=True))
            for chunk in _id_chunks(ids):
                Item.objects.filter(pk__in=chunk).update(gold_starred_at=now, gold_starred_by=user)
            action.changes = {"item_ids": ids}
            action.affected = len(ids)
        elif kind == BulkAction.Kind.UNGOLD:
            ids = []
            previous = []
            for pk, by_id, starred_at in items.filter(gold_starred_at__isnull=False).values_list(
                "pk", "gold_starred_by_id", "gold_starred_at"
            ):
                ids.append(pk)
                previous.append([pk, by_id, starred_at.isoformat() if starred_at else None])
            for chunk in _id_chunks(ids):
                Item.objects.filter(pk__in=chunk).update(gold_starred_at=None, gold_starred_by=None)
            action.changes = {"previous": previous}
            action.affected = len(ids)
        else:
            action.changes, action.affected = _bulk_discard(items=items, user=user, now=now)
        action.save(update_fields=["changes", "affected"])
    return action


def _bulk_discard(*, items: QuerySet[Item], user: Any, now: datetime) -> tuple[dict[str, Any], int]:
    mine = Response.objects.filter(reviewer=user, item__in=items)
    previous: list[tuple[int, str]] = list(
        mine.exclude(status=Response.Status.DISCARDED).values_list("pk", "status")
    )
    for chunk in _id_chunks([pk for pk, _ in previous]):
        Response.objects.filter(pk__in=chunk).update(
            status=Response.Status.DISCARDED, updated_at=now
        )
    created_for = list(
        items.exclude(responses__reviewer=user).values_list("pk", flat=True).order_by()
    )
    Response.objects.bulk_create(
        [
            Response(
                item_id=item_id,
                reviewer=user,
                status=Response.Status.DISCARDED,
                created_at=now,
                updated_at=now,
            )
            for item_id in created_for
        ],
        batch_size=1_000,
    )
    changed_items = list(
        Response.objects.filter(pk__in=[pk for pk, _ in previous]).values_list("item_id", flat=True)
    )
    items_recount(item_ids=changed_items)
    return {"previous": previous, "created_for": created_for}, len(previous) + len(created_for)


def bulk_action_undo(*, action: BulkAction, user: Any) -> BulkAction:
    """Put back what a bulk action changed, leaving alone what others changed since."""
    if action.undone_at is not None:
        raise CurationError("This bulk action was already undone.")
    if action.user_id != user.pk and not user.is_staff:
        raise CurationError("Only the person who made a bulk action can undo it.")
    changes = action.changes
    with transaction.atomic():
        if action.kind == BulkAction.Kind.GOLD:
            for chunk in _id_chunks(changes.get("item_ids", [])):
                Item.objects.filter(pk__in=chunk, gold_starred_at=action.created_at).update(
                    gold_starred_at=None, gold_starred_by=None
                )
        elif action.kind == BulkAction.Kind.UNGOLD:
            for pk, by_id, starred_at in changes.get("previous", []):
                Item.objects.filter(pk=pk, gold_starred_at__isnull=True).update(
                    gold_starred_at=datetime.fromisoformat(starred_at), gold_starred_by_id=by_id
                )
        else:
            _undo_discard(action=action, changes=changes)
        action.undone_at = timezone.now()
        action.save(update_fields=["undone_at"])
    return action


def _undo_discard(*, action: BulkAction, changes: dict[str, Any]) -> None:
    by_status: dict[str, list[int]] = defaultdict(list)
    for pk, status in changes.get("previous", []):
        by_status[status].append(pk)
    touched: list[int] = []
    for status, pks in by_status.items():
        for chunk in _id_chunks(pks):
            still = Response.objects.filter(pk__in=chunk, status=Response.Status.DISCARDED)
            touched.extend(still.values_list("item_id", flat=True))
            still.update(status=status)
    for chunk in _id_chunks(changes.get("created_for", [])):
        Response.objects.filter(
            reviewer_id=action.user_id,
            item_id__in=chunk,
            status=Response.Status.DISCARDED,
            created_at=action.created_at,
        ).delete()
    items_recount(item_ids=touched)
