"""Conquest schemas, curation queues, items and reviewers' responses.

A schema says what a reviewer sees (data sources), what they answer (questions), how the page is
laid out (rendering) and how reviewed items become training data (export). A queue applies one
schema version to one or more completed batches; each ``custom_id`` becomes an item, with one
output per batch so that several models on the same inputs sit side by side.
"""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

REVIEWER_GROUP = "reviewers"


class ConquestSchemaQuerySet(models.QuerySet["ConquestSchema"]):
    def latest_version(self, key: str) -> ConquestSchema | None:
        """The most recently imported version of the schema ``key``."""
        return self.filter(key=key).order_by("-id").first()


class ConquestSchema(models.Model):
    """One version of a schema; a changed schema is imported under a new version."""

    key = models.CharField(max_length=100, help_text="The schema's id in its JSON file.")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    version = models.CharField(max_length=50, default="1")
    # Top-level keys of the JSON file that have no field here, so an export gives them back.
    extra = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = ConquestSchemaQuerySet.as_manager()

    class Meta:
        ordering = ("key", "-id")
        verbose_name = "conquest schema"
        constraints = [
            models.UniqueConstraint(fields=["key", "version"], name="schema_key_version_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key} v{self.version})"


class DataSource(models.Model):
    """Something the reviewer sees, and where its value comes from in the batch."""

    class Type(models.TextChoices):
        TEXT = "text"
        STRUCTURED = "structured"
        CHAT = "chat"
        FILE = "file"

    class DisplayFormat(models.TextChoices):
        DEFAULT = "default"
        HEADER = "header"
        LIST = "list"
        COLLAPSIBLE = "collapsible"
        TIMELINE = "timeline"
        MARKDOWN = "markdown"
        LINK = "link"

    class Source(models.TextChoices):
        # Empty: look in the request body's metadata, then in a JSON user message, then in the
        # batch metadata (a chat source takes the request's messages).
        AUTO = "", "automatic"
        REQUEST = "request", "request body"
        RESPONSE = "response", "response body"
        OUTPUT = "output", "model output (JSON)"
        METADATA = "metadata", "batch metadata"

    schema = models.ForeignKey(
        ConquestSchema, on_delete=models.CASCADE, related_name="data_sources"
    )
    position = models.PositiveIntegerField(default=0)
    key = models.CharField(max_length=100)
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.TEXT)
    required = models.BooleanField(default=False)
    display_format = models.CharField(
        max_length=16, choices=DisplayFormat.choices, default=DisplayFormat.DEFAULT
    )
    source = models.CharField(max_length=16, choices=Source.choices, blank=True, default="")
    path = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="Dotted path from the source, e.g. messages.-1.content.subject; a JSON string "
        "on the way is parsed. Empty: the data source's key.",
    )
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("schema", "position")
        constraints = [
            models.UniqueConstraint(fields=["schema", "key"], name="data_source_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.key})"


class Question(models.Model):
    class Type(models.TextChoices):
        CHOICE = "choice"
        MULTI_CHOICE = "multi-choice"
        RATING = "rating"
        BOOLEAN = "boolean"
        TEXT = "text"
        NUMBER = "number"
        STRUCTURED = "structured"
        RANKING = "ranking"

    # Types answered by picking one of the options: the number keys choose them.
    SINGLE_OPTION_TYPES: ClassVar[tuple[str, ...]] = ("choice", "rating", "boolean")
    OPTION_TYPES: ClassVar[tuple[str, ...]] = (*SINGLE_OPTION_TYPES, "multi-choice", "ranking")

    schema = models.ForeignKey(ConquestSchema, on_delete=models.CASCADE, related_name="questions")
    position = models.PositiveIntegerField(default=0)
    key = models.CharField(max_length=100)
    text = models.CharField(max_length=500)
    type = models.CharField(max_length=16, choices=Type.choices, default=Type.TEXT)
    options = models.JSONField(default=list, blank=True)
    required = models.BooleanField(default=False)
    help_text = models.TextField(blank=True, default="", help_text="Guidance or rubric.")
    model_answer_path = models.CharField(
        max_length=500,
        blank=True,
        default="",
        help_text="Where the model's answer is in its JSON output; empty: the question's key.",
    )
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("schema", "position")
        constraints = [
            models.UniqueConstraint(fields=["schema", "key"], name="question_key_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.text} ({self.key})"

    @property
    def choices(self) -> list[str]:
        """The options offered; a boolean without options is answered Yes or No."""
        if self.options:
            return [str(option) for option in self.options]
        if self.type == self.Type.BOOLEAN:
            return ["Yes", "No"]
        return []

    @property
    def answer_path(self) -> str:
        return self.model_answer_path or self.key


class RenderingConfig(models.Model):
    class Layout(models.TextChoices):
        SINGLE_COLUMN = "single-column"
        TWO_COLUMN = "two-column"
        GRID = "grid"

    schema = models.OneToOneField(
        ConquestSchema, on_delete=models.CASCADE, related_name="rendering"
    )
    layout = models.CharField(max_length=16, choices=Layout.choices, default=Layout.TWO_COLUMN)
    show_llm_prediction = models.BooleanField(default=True)
    show_data_sources = models.BooleanField(default=True)
    show_rubrics = models.BooleanField(default=True)
    theme = models.CharField(max_length=100, blank=True, default="")
    custom_template = models.CharField(max_length=100, blank=True, default="")
    custom_css = models.TextField(
        blank=True, default="", help_text="Applies only inside this schema's item page."
    )
    extra = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"rendering of {self.schema}"


class ExportConfig(models.Model):
    schema = models.OneToOneField(ConquestSchema, on_delete=models.CASCADE, related_name="export")
    icl_system_prompt = models.TextField(blank=True, default="")
    icl_user_template = models.TextField(
        blank=True, default="", help_text="{dataSourceId} placeholders."
    )
    icl_assistant_template = models.TextField(
        blank=True, default="", help_text="{questionId} placeholders."
    )
    finetuning_input_fields = models.JSONField(default=list, blank=True)
    finetuning_output_fields = models.JSONField(default=list, blank=True)
    # Keys of "export", "iclFormat" and "finetuningFormat" that have no field here.
    extra = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return f"export of {self.schema}"


def is_reviewer(user: Any) -> bool:
    """Staff, or a member of the reviewers group."""
    if not getattr(user, "is_authenticated", False):
        return False
    return bool(user.is_staff or user.groups.filter(name=REVIEWER_GROUP).exists())


class QueueQuerySet(models.QuerySet["Queue"]):
    def visible_to(self, user: Any) -> QueueQuerySet:
        """Staff see every queue; a reviewer sees queues that list them or list nobody."""
        if getattr(user, "is_staff", False):
            return self
        if not is_reviewer(user):
            return self.none()
        assigned = Queue.reviewers.through.objects.filter(queue_id=OuterRef("pk"))
        return self.filter(~Exists(assigned) | Exists(assigned.filter(user_id=user.pk)))


class Queue(models.Model):
    """A schema applied to one or more completed batches, joined by custom_id."""

    name = models.CharField(max_length=200)
    description = models.TextField(blank=True, default="")
    schema = models.ForeignKey(ConquestSchema, on_delete=models.PROTECT, related_name="queues")
    required_submissions = models.PositiveSmallIntegerField(
        default=1, help_text="Submitted responses that complete an item."
    )
    reviewers = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="curation_queues",
        help_text="Who may review; nobody listed means every member of the reviewers group.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    objects = QueueQuerySet.as_manager()

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.CheckConstraint(
                condition=Q(required_submissions__gte=1), name="queue_required_submissions_min"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class QueueBatch(models.Model):
    """A batch whose results feed a queue; the first one's model is the reference."""

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="queue_batches")
    batch = models.ForeignKey("batches.Batch", on_delete=models.CASCADE, related_name="+")
    position = models.PositiveSmallIntegerField(default=0)
    model = models.CharField(max_length=255, blank=True, default="")
    imported_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("queue", "position")
        constraints = [
            models.UniqueConstraint(fields=["queue", "batch"], name="queue_batch_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id} in {self.queue_id}"


class Item(models.Model):
    """One custom_id of a queue: what the reviewer sees and whether it is done or gold."""

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="items")
    custom_id = models.CharField(max_length=512)
    position = models.PositiveIntegerField()
    data = models.JSONField(default=dict, blank=True)
    # The request's messages (or prompt): what was asked, shown and exported when no template is.
    prompt = models.JSONField(null=True, blank=True)
    # Data values and output texts in one column, for the reviewers' text search.
    search_text = models.TextField(blank=True, default="")
    submitted_count = models.PositiveIntegerField(default=0)
    reviewers_disagree = models.BooleanField(default=False)
    gold_starred_at = models.DateTimeField(null=True, blank=True)
    gold_starred_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("queue", "position")
        constraints = [
            # The join key of a queue's batches, and what makes re-imports idempotent.
            models.UniqueConstraint(
                fields=["queue", "custom_id"], name="item_queue_custom_id_uniq"
            ),
        ]
        indexes = [
            # Every item list and next/previous step walks one queue in position order.
            models.Index(fields=["queue", "position"], name="item_queue_position_idx"),
            # The gold filter and the default export scope.
            models.Index(
                fields=["queue", "position"],
                name="item_queue_gold_idx",
                condition=Q(gold_starred_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.custom_id

    @property
    def is_gold(self) -> bool:
        return self.gold_starred_at is not None


class ItemOutput(models.Model):
    """What one model (one batch) answered for an item; never changed after import."""

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="outputs")
    batch = models.ForeignKey(
        "batches.Batch", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    position = models.PositiveSmallIntegerField(default=0)
    model = models.CharField(max_length=255, blank=True, default="")
    text = models.TextField(blank=True, default="")
    # The output parsed as JSON when it is JSON; null when it is not (shown raw).
    parsed = models.JSONField(null=True, blank=True)
    # The model's own answer per question key, found in ``parsed``: the reviewer's suggestions.
    answers = models.JSONField(default=dict, blank=True)
    # {"code", "message"} when the request failed.
    error = models.JSONField(null=True, blank=True)
    finish_reason = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ("item", "position")
        constraints = [
            models.UniqueConstraint(fields=["item", "batch"], name="item_output_batch_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.model} on {self.item_id}"


class ResponseQuerySet(models.QuerySet["Response"]):
    def submitted(self) -> ResponseQuerySet:
        return self.filter(status=Response.Status.SUBMITTED)


class Response(models.Model):
    """One reviewer's work on one item."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        SUBMITTED = "submitted"
        DISCARDED = "discarded"

    item = models.ForeignKey(Item, on_delete=models.CASCADE, related_name="responses")
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="curation_responses"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DRAFT)
    answers = models.JSONField(default=dict, blank=True)
    # The output the reviewer started from (or preferred, when models are compared).
    base_output = models.ForeignKey(
        ItemOutput, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Empty when not edited: the original output stays in ItemOutput.text.
    edited_output = models.TextField(blank=True, default="")
    notes = models.TextField(blank=True, default="")
    time_spent_seconds = models.FloatField(default=0.0)
    disagrees_with_model = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)
    submitted_at = models.DateTimeField(null=True, blank=True)

    objects = ResponseQuerySet.as_manager()

    class Meta:
        ordering = ("item", "reviewer")
        constraints = [
            models.UniqueConstraint(
                fields=["item", "reviewer"], name="response_item_reviewer_uniq"
            ),
            models.CheckConstraint(
                condition=Q(time_spent_seconds__gte=0), name="response_time_spent_non_negative"
            ),
            models.CheckConstraint(
                condition=Q(status__in=["draft", "submitted", "discarded"]),
                name="response_status_valid",
            ),
        ]
        indexes = [
            # Per-reviewer progress and the "my status" filters.
            models.Index(fields=["reviewer", "status"], name="response_reviewer_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.reviewer_id} on {self.item_id} ({self.status})"


class BulkAction(models.Model):
    """A bulk change over a filter, with what it changed, so that it can be undone."""

    class Kind(models.TextChoices):
        GOLD = "gold", "gold-star"
        UNGOLD = "ungold", "remove gold star"
        DISCARD = "discard", "discard"

    queue = models.ForeignKey(Queue, on_delete=models.CASCADE, related_name="bulk_actions")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # The filter it applied to, as query parameters, to tell people what was done.
    filters = models.JSONField(default=dict, blank=True)
    affected = models.PositiveIntegerField(default=0)
    # Previous state of every changed row; see services.bulk_action_undo for the shapes.
    changes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    undone_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-id",)
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=["gold", "ungold", "discard"]), name="bulk_action_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of {self.affected} items"


def item_is_complete_q() -> Q:
    return Q(submitted_count__gte=F("queue__required_submissions"))


def comparable(answer: Any) -> Any:
    """An answer in a form where equal meaning compares equal: case, spacing and 1 vs 1.0."""
    if isinstance(answer, bool):
        return answer
    if isinstance(answer, int | float):
        return float(answer)
    if isinstance(answer, str):
        return " ".join(answer.split()).casefold()
    if isinstance(answer, list):
        return tuple(comparable(entry) for entry in answer)
    if isinstance(answer, dict):
        return tuple(sorted((str(key), repr(comparable(value))) for key, value in answer.items()))
    return answer
