from __future__ import annotations

from django.contrib import admin

from inference.models import BatchChunk, RegisteredModel, Worker


@admin.register(RegisteredModel)
class RegisteredModelAdmin(admin.ModelAdmin[RegisteredModel]):
    list_display = ("name", "source", "enabled", "updated_at")
    list_filter = ("enabled",)
    search_fields = ("name", "source")


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin[Worker]):
    list_display = (
        "name",
        "host",
        "pid",
        "loaded_model",
        "current_batch_id",
        "last_heartbeat_at",
        "throughput",
    )
    readonly_fields = [f.name for f in Worker._meta.fields]


@admin.register(BatchChunk)
class BatchChunkAdmin(admin.ModelAdmin[BatchChunk]):
    list_display = ("batch", "index", "start_line", "end_line", "completed", "failed", "worker")
    search_fields = ("batch__id",)
    readonly_fields = [f.name for f in BatchChunk._meta.fields]
