"""The model registry, GPU workers and the durable record of finished chunks."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import Q
from django.utils import timezone


class RegisteredModelQuerySet(models.QuerySet["RegisteredModel"]):
    def enabled(self) -> RegisteredModelQuerySet:
        return self.filter(enabled=True)


class RegisteredModel(models.Model):
    """A client-facing model name and how the worker loads it into vLLM."""

    name = models.CharField(
        max_length=255, unique=True, help_text="The name clients send as body.model."
    )
    source = models.CharField(
        max_length=1024, help_text="A local directory or a Hugging Face hub id."
    )
    engine_args = models.JSONField(
        default=dict,
        blank=True,
        help_text=(
            "Keyword arguments for vllm.LLM: dtype, max_model_len, gpu_memory_utilization, "
            "tensor_parallel_size, quantization, enforce_eager, …"
        ),
    )
    default_sampling = models.JSONField(
        default=dict,
        blank=True,
        help_text='Sampling defaults for requests that do not set them, e.g. {"max_tokens": 256}.',
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = RegisteredModelQuerySet.as_manager()

    class Meta:
        ordering = ("name",)
        verbose_name = "registered model"

    def __str__(self) -> str:
        return self.name

    @property
    def max_model_len(self) -> int | None:
        value: Any = self.engine_args.get("max_model_len")
        return int(value) if value is not None else None


class Worker(models.Model):
    """One GPU worker process; its heartbeat runs on its own thread so it never freezes."""

    name = models.CharField(max_length=255, unique=True)
    host = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    loaded_model = models.CharField(max_length=255, blank=True, default="")
    current_batch_id = models.CharField(max_length=64, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    requests_done = models.BigIntegerField(default=0)
    # Output tokens per second over the last finished chunk.
    throughput = models.FloatField(default=0.0)
    model_load_seconds = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ("-last_heartbeat_at",)
        indexes = [models.Index(fields=["last_heartbeat_at"], name="worker_heartbeat_idx")]

    def __str__(self) -> str:
        return self.name


class BatchChunk(models.Model):
    """A finished slice of a batch's input: its results are in storage before this row exists.

    Chunks are contiguous: chunk n covers input lines [start_line, end_line) and starts at byte
    start_offset of the input file, so a worker resumes at the end of the last chunk.
    """

    batch = models.ForeignKey("batches.Batch", on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    start_line = models.PositiveIntegerField()
    end_line = models.PositiveIntegerField()
    start_offset = models.BigIntegerField()
    end_offset = models.BigIntegerField()
    output_name = models.CharField(max_length=255, blank=True, default="")
    error_name = models.CharField(max_length=255, blank=True, default="")
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    worker = models.CharField(max_length=255, blank=True, default="")
    # Wall time from the end of the previous chunk's bookkeeping to this chunk's results: the
    # chunks of a run add up to its time, so speeds and ETAs made from them hold.
    seconds = models.FloatField(default=0.0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("batch", "index")
        constraints = [
            # A chunk is recorded once: a second worker that ran it anyway cannot commit it twice.
            models.UniqueConstraint(fields=["batch", "index"], name="chunk_unique_index"),
            models.UniqueConstraint(fields=["batch", "start_line"], name="chunk_unique_start"),
            models.CheckConstraint(
                condition=Q(end_line__gte=models.F("start_line")), name="chunk_lines_ordered"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id} chunk {self.index}"
