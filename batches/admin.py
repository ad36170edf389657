from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from batches import services
from batches.api.errors import ConflictError
from batches.models import ApiKey, Batch, File


@admin.register(File)
class FileAdmin(admin.ModelAdmin[File]):
    list_display = ("id", "filename", "purpose", "bytes", "owner", "created_at", "expires_at")
    list_filter = ("purpose",)
    search_fields = ("id", "filename", "owner__username")
    readonly_fields = ("id", "bytes", "content", "created_at")
    date_hierarchy = "created_at"


@admin.register(Batch)
class BatchAdmin(admin.ModelAdmin[Batch]):
    list_display = (
        "id",
        "status",
        "model",
        "owner",
        "request_total",
        "request_completed",
        "request_failed",
        "priority",
        "created_at",
    )
    list_filter = ("status", "endpoint", "model")
    search_fields = ("id", "input_file_id", "owner__username")
    date_hierarchy = "created_at"
    actions = ["cancel_batches"]
    readonly_fields = (
        "id",
        "owner",
        "endpoint",
        "input_file_id",
        "completion_window",
        "status",
        "model",
        "errors",
        "request_total",
        "request_completed",
        "request_failed",
        "input_tokens",
        "output_tokens",
        "output_file",
        "error_file",
        "created_at",
        "expires_at",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "lease_owner",
        "lease_expires_at",
    )

    @admin.action(description="Cancel selected batches")
    def cancel_batches(self, request: HttpRequest, queryset: QuerySet[Batch]) -> None:
        cancelled = 0
        for batch in queryset:
            try:
                services.batch_cancel(batch=batch)
                cancelled += 1
            except ConflictError as error:
                self.message_user(request, f"{batch.id}: {error.message}", messages.WARNING)
        if cancelled:
            self.message_user(request, f"Cancelled or cancelling {cancelled} batch(es).")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin[ApiKey]):
    list_display = ("name", "owner", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "owner__username")
    fields = ("owner", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke_keys"]

    def save_model(self, request: HttpRequest, obj: ApiKey, form: Any, change: bool) -> None:
        if change:
            obj.save(update_fields=["name", "owner"])
            return
        key, raw = services.api_key_create(owner=obj.owner, name=obj.name)
        obj.pk = key.pk
        obj.prefix = key.prefix
        # Shown once: only the hash is stored.
        self.message_user(
            request,
            f"New API key (copy it now, it will not be shown again): {raw}",
            messages.SUCCESS,
        )

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            services.api_key_revoke(key=key)
        self.message_user(request, f"Revoked {queryset.count()} key(s).")
