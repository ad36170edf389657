from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from batches import services
from batches.api.errors import ConflictError
from batches.models import (
    ApiKey,
    Batch,
    BatchEvent,
    File,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEventType,
)


@admin.register(File)
class FileAdmin(admin.ModelAdmin[File]):
    list_display = ("id", "filename", "purpose", "bytes", "owner", "created_at", "expires_at")
    list_filter = ("purpose",)
    search_fields = ("id", "filename", "owner__username")
    readonly_fields = ("id", "bytes", "content", "created_at")
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Files arrive through the API (streamed, size-checked) or from finished batches.
        return False


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

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A batch starts from POST /v1/batches, which schedules its validation.
        return False

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


# --- Webhooks and batch events (batches.webhooks, batches.events) -------------------------------


class WebhookEndpointForm(forms.ModelForm[WebhookEndpoint]):
    event_types = forms.MultipleChoiceField(
        choices=WebhookEventType.choices, widget=forms.CheckboxSelectMultiple
    )

    class Meta:
        model = WebhookEndpoint
        fields = ("owner", "name", "url", "event_types", "enabled")

    def clean_url(self) -> str:
        from batches import webhooks

        url: str = self.cleaned_data["url"]
        try:
            webhooks.target_addresses(url)
        except webhooks.UnsafeTargetError as error:
            raise forms.ValidationError(str(error)) from None
        return url


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin[WebhookEndpoint]):
    form = WebhookEndpointForm
    list_display = ("id", "owner", "name", "url", "event_types", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("id", "url", "name", "owner__username")
    # The owner needs the secret to verify signatures; staff hand it over from here.
    readonly_fields = ("id", "secret", "created_at", "updated_at")
    actions = ["rotate_secrets"]

    @admin.action(description="Rotate the signing secret (the old one stops working at once)")
    def rotate_secrets(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        from batches import webhooks

        for endpoint in queryset:
            webhooks.webhook_endpoint_rotate_secret(endpoint=endpoint)
        self.message_user(request, f"Rotated the secret of {queryset.count()} endpoint(s).")


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin[WebhookDelivery]):
    list_display = (
        "event_type",
        "batch_id",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    )
    list_filter = ("status", "event_type")
    search_fields = ("batch_id", "event_id", "endpoint__url")
    readonly_fields = [f.name for f in WebhookDelivery._meta.fields]
    actions = ["retry_deliveries"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Send failed deliveries again")
    def retry_deliveries(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        from batches import webhooks

        retried = sum(webhooks.webhook_delivery_retry(delivery=d) for d in queryset)
        skipped = queryset.count() - retried
        self.message_user(request, f"Queued {retried} delivery(ies) again.")
        if skipped:
            self.message_user(
                request, f"Skipped {skipped} not in the failed state.", messages.WARNING
            )


@admin.register(BatchEvent)
class BatchEventAdmin(admin.ModelAdmin[BatchEvent]):
    list_display = ("at", "batch", "kind", "message")
    list_filter = ("kind",)
    search_fields = ("batch__id", "message")
    readonly_fields = ("batch", "at", "kind", "message", "data")
