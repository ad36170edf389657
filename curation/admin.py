"""Admin: schemas with their parts (import/export as JSON), queues made from batches."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseBase, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from curation import services
from curation.forms import QueueAdminForm, SchemaImportForm
from curation.models import (
    BulkAction,
    ConquestSchema,
    DataSource,
    ExportConfig,
    Item,
    ItemOutput,
    Question,
    Queue,
    QueueBatch,
    RenderingConfig,
    Response,
)
from curation.schemas import SchemaError, schema_import, schema_to_dict


class DataSourceInline(admin.TabularInline[DataSource, ConquestSchema]):
    model = DataSource
    extra = 0
    fields = ("position", "key", "name", "type", "required", "display_format", "source", "path")


class QuestionInline(admin.StackedInline[Question, ConquestSchema]):
    model = Question
    extra = 0
    fields = (
        ("position", "key", "type", "required"),
        "text",
        "options",
        "help_text",
        "model_answer_path",
    )


class RenderingInline(admin.StackedInline[RenderingConfig, ConquestSchema]):
    model = RenderingConfig
    can_delete = False
    exclude = ("extra",)


class ExportInline(admin.StackedInline[ExportConfig, ConquestSchema]):
    model = ExportConfig
    can_delete = False
    exclude = ("extra",)


@admin.register(ConquestSchema)
class ConquestSchemaAdmin(admin.ModelAdmin[ConquestSchema]):
    list_display = ("key", "version", "name", "created_at")
    search_fields = ("key", "name")
    inlines = (DataSourceInline, QuestionInline, RenderingInline, ExportInline)
    actions = ("download_json",)
    change_list_template = "admin/curation/conquestschema/change_list.html"

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "import/",
                self.admin_site.admin_view(self.import_view),
                name="curation_conquestschema_import",
            )
        ]
        return custom + super().get_urls()

    def import_view(self, request: HttpRequest) -> HttpResponseBase:
        if not self.has_add_permission(request):
            return HttpResponseRedirect(reverse("admin:curation_conquestschema_changelist"))
        form = SchemaImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                data = json.load(form.cleaned_data["file"])
                schema, created = schema_import(data=data, user=request.user)
            except (ValueError, SchemaError) as error:
                form.add_error("file", str(error))
            else:
                verb = "Imported" if created else "Already had"
                self.message_user(request, f"{verb} {schema}.", messages.SUCCESS)
                return HttpResponseRedirect(
                    reverse("admin:curation_conquestschema_change", args=[schema.pk])
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "form": form,
            "title": "Import a conquest schema",
        }
        return TemplateResponse(request, "admin/curation/conquestschema/import.html", context)

    @admin.action(description="Download as JSON")
    def download_json(
        self, request: HttpRequest, queryset: QuerySet[ConquestSchema]
    ) -> HttpResponse:
        schemas = [schema_to_dict(schema) for schema in queryset.order_by("key", "id")]
        document: Any = schemas[0] if len(schemas) == 1 else schemas
        response = HttpResponse(
            json.dumps(document, indent=2, ensure_ascii=False) + "\n",
            content_type="application/json; charset=utf-8",
        )
        name = schemas[0]["id"] if len(schemas) == 1 else "schemas"
        response["Content-Disposition"] = f'attachment; filename="{name}.json"'
        return response


class QueueBatchInline(admin.TabularInline[QueueBatch, Queue]):
    model = QueueBatch
    extra = 0
    fields = ("position", "batch", "model", "imported_at")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Queue)
class QueueAdmin(admin.ModelAdmin[Queue]):
    form = QueueAdminForm
    list_display = ("name", "schema", "required_submissions", "created_at")
    search_fields = ("name",)
    filter_horizontal = ("reviewers",)
    inlines = (QueueBatchInline,)

    def get_fields(self, request: HttpRequest, obj: Queue | None = None) -> tuple[str, ...]:
        fields = ("name", "description", "schema", "required_submissions", "reviewers")
        # Batches are chosen when the queue is made; later ones come from the batches page.
        return (*fields, "source_batches") if obj is None else fields

    def get_readonly_fields(
        self, request: HttpRequest, obj: Queue | None = None
    ) -> tuple[str, ...]:
        return ("schema",) if obj is not None else ()

    def save_model(self, request: HttpRequest, obj: Queue, form: Any, change: bool) -> None:
        if not change and request.user.is_authenticated:
            obj.created_by = request.user
        super().save_model(request, obj, form, change)
        for batch in form.cleaned_data.get("source_batches") or []:
            try:
                services.queue_add_batch(queue=obj, batch=batch)
            except services.CurationError as error:
                self.message_user(request, str(error), messages.ERROR)


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin[Item]):
    list_display = ("custom_id", "queue", "position", "submitted_count", "gold_starred_at")
    list_filter = ("queue",)
    search_fields = ("custom_id",)
    raw_id_fields = ("queue", "gold_starred_by")
    readonly_fields = ("submitted_count", "reviewers_disagree")


@admin.register(ItemOutput)
class ItemOutputAdmin(admin.ModelAdmin[ItemOutput]):
    list_display = ("item", "model", "batch", "finish_reason")
    raw_id_fields = ("item", "batch")
    search_fields = ("item__custom_id",)


@admin.register(Response)
class ResponseAdmin(admin.ModelAdmin[Response]):
    list_display = ("item", "reviewer", "status", "updated_at", "time_spent_seconds")
    list_filter = ("status",)
    raw_id_fields = ("item", "reviewer", "base_output")


@admin.register(BulkAction)
class BulkActionAdmin(admin.ModelAdmin[BulkAction]):
    list_display = ("queue", "user", "kind", "affected", "created_at", "undone_at")
    readonly_fields = ("queue", "user", "kind", "filters", "affected", "created_at", "undone_at")
    exclude = ("changes",)
