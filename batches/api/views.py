"""The /v1 Files, Batches and Models endpoints: thin views over batches.services."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from batches import services
from batches.api.errors import NotFoundError
from batches.api.pagination import OpenAICursorPagination
from batches.api.serializers import (
    BatchCreateSerializer,
    BatchObjectSerializer,
    FileCreateSerializer,
    FileDeletedSerializer,
    FileObjectSerializer,
    ModelListSerializer,
    ModelObjectSerializer,
)
from batches.api.uploads import limit_upload_size
from batches.models import Batch, File
from inference.models import RegisteredModel

ERROR_RESPONSES = {
    400: OpenApiResponse(description="Invalid request (OpenAI error envelope)."),
    401: OpenApiResponse(description="Missing or invalid API key."),
    404: OpenApiResponse(description="No such object for this key."),
}


class DownloadRenderer(renderers.BaseRenderer):
    """Lets file downloads satisfy any Accept header (the SDK asks for application/binary).

    The file itself is a FileResponse and never passes through here; errors on the download
    route still go out as OpenAI's JSON envelope.
    """

    media_type = "*/*"
    format = "download"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if renderer_context is not None:
            renderer_context["response"]["Content-Type"] = "application/json"
        return json.dumps(data).encode()


class OwnedObjectMixin:
    """Looks objects up among the caller's own only: another owner's id is simply not found."""

    request: Request
    kwargs: dict[str, Any]
    not_found_label = "object"

    def get_object(self) -> Any:
        pk = self.kwargs["pk"]
        obj = self.get_queryset().filter(pk=pk).first()  # type: ignore[attr-defined]
        if obj is None:
            raise NotFoundError(f"No {self.not_found_label} found with id '{pk}'.")
        return obj


class FileViewSet(
    OwnedObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    serializer_class = FileObjectSerializer
    pagination_class = OpenAICursorPagination
    default_limit = 10_000
    max_limit = 10_000
    allow_order = True
    not_found_label = "file"

    def get_queryset(self) -> QuerySet[File]:
        files = File.objects.owned_by(self.request.user)
        purpose = self.request.query_params.get("purpose")
        if purpose and self.action == "list":
            files = files.filter(purpose=purpose)
        return files

    def get_parsers(self) -> list[Any]:
        if getattr(self, "action", None) == "create" or self.request.method == "POST":
            return [MultiPartParser(), FormParser()]
        return super().get_parsers()

    @extend_schema(
        parameters=[OpenApiParameter("purpose", str, required=False)],
        responses={200: FileObjectSerializer(many=True)},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=FileCreateSerializer, responses={200: FileObjectSerializer, **ERROR_RESPONSES})
    def create(self, request: Request) -> Response:
        limit_upload_size(request)
        serializer = FileCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        file = services.file_create(
            owner=request.user,
            upload=data["file"],
            purpose=data["purpose"],
            expires_after_seconds=data.get("expires_after_seconds"),
        )
        return Response(FileObjectSerializer(file).data)

    @extend_schema(request=None, responses={200: FileDeletedSerializer, **ERROR_RESPONSES})
    def destroy(self, request: Request, pk: str) -> Response:
        file = self.get_object()
        services.file_delete(file=file)
        return Response({"id": pk, "object": "file", "deleted": True})

    @extend_schema(
        responses={
            (200, "application/octet-stream"): OpenApiTypes.BINARY,
            **ERROR_RESPONSES,
        }
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[renderers.JSONRenderer, DownloadRenderer],
    )
    def content(self, request: Request, pk: str) -> FileResponse:
        file = self.get_object()
        # Always a download, never rendered: a JSONL of model output may contain markup.
        return FileResponse(
            file.content.open("rb"),
            as_attachment=True,
            filename=file.filename,
            content_type="application/octet-stream",
        )


class BatchViewSet(
    OwnedObjectMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,  # type: ignore[type-arg]
):
    serializer_class = BatchObjectSerializer
    pagination_class = OpenAICursorPagination
    default_limit = 20
    max_limit = 100
    not_found_label = "batch"

    def get_queryset(self) -> QuerySet[Batch]:
        return Batch.objects.owned_by(self.request.user)

    @extend_schema(request=BatchCreateSerializer, responses={200: BatchObjectSerializer, **ERROR_RESPONSES})
    def create(self, request: Request) -> Response:
        serializer = BatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        expires = data.get("output_expires_after")
        batch = services.batch_create(
            owner=request.user,
            input_file_id=data["input_file_id"],
            endpoint=data["endpoint"],
            completion_window=data["completion_window"],
            metadata=data.get("metadata"),
            output_expires_after_seconds=expires["seconds"] if expires else None,
            priority=data["priority"],
        )
        return Response(BatchObjectSerializer(batch).data)

    @extend_schema(
        request=None,
        responses={
            200: BatchObjectSerializer,
            409: OpenApiResponse(description="The batch has already ended."),
            **ERROR_RESPONSES,
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        batch = services.batch_cancel(batch=self.get_object())
        return Response(BatchObjectSerializer(batch).data, status=status.HTTP_200_OK)


class ModelViewSet(OwnedObjectMixin, viewsets.GenericViewSet):  # type: ignore[type-arg]
    serializer_class = ModelObjectSerializer
    not_found_label = "model"
    lookup_value_regex = "[^/]+(?:/[^/]+)*"

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        return RegisteredModel.objects.enabled()

    def get_object(self) -> Any:
        name = self.kwargs["pk"]
        model = self.get_queryset().filter(name=name).first()
        if model is None:
            raise NotFoundError(f"The model '{name}' does not exist.", code="model_not_found")
        return model

    @extend_schema(responses={200: ModelListSerializer})
    def list(self, request: Request) -> Response:
        data = ModelObjectSerializer(self.get_queryset(), many=True).data
        return Response({"object": "list", "data": data})

    @extend_schema(responses={200: ModelObjectSerializer, **ERROR_RESPONSES})
    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(ModelObjectSerializer(self.get_object()).data)
