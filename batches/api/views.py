"""The /v1 Files, Batches and Models endpoints: thin views over batches.services."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, renderers, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from batches import services
from batches.api.errors import InvalidRequestError, NotFoundError
from batches.api.lookups import CompiledLookup
from batches.api.pagination import OpenAICursorPagination
from batches.api.parsers import UnicodeJSONParser
from batches.api.serializers import (
    BatchCreateSerializer,
    BatchObjectSerializer,
    ErrorSerializer,
    FileCreateSerializer,
    FileDeletedSerializer,
    FileObjectSerializer,
    ModelListSerializer,
    ModelObjectSerializer,
)
from batches.api.throttles import (
    BatchCreateRateThrottle,
    UploadRateThrottle,
    queued_requests_check,
)
from batches.api.uploads import limit_upload_size
from batches.models import Batch, File
from inference.models import RegisteredModel


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


UNAUTHORIZED = {401: _error("Missing, invalid or revoked API key.")}
NOT_FOUND = {404: _error("No such object among the caller's own."), **UNAUTHORIZED}
BAD_REQUEST = {400: _error("Invalid parameter."), **UNAUTHORIZED}
RATE_LIMITED = {429: _error("A per-key rate limit or the queued-requests cap was reached.")}


class DownloadRenderer(renderers.BaseRenderer):
    """Lets file downloads satisfy any Accept header (the SDK asks for application/binary).

    The file itself is a FileResponse and never passes through here; errors on the download
    route still go out as OpenAI's JSON envelope.
    """

    media_type = "*/*"
    # The same format as JSONRenderer's, so the route grows no ?format= parameter.
    format = "json"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        if renderer_context is not None:
            renderer_context["response"]["Content-Type"] = "application/json"
        return json.dumps(data).encode()


# A path segment of an id: no stored id holds a NUL character, and PostgreSQL cannot even compare
# text with one. A path with one matches no route and gets UnknownRouteView's 404.
ID_PATTERN = r"[^/.\x00]+"


class NulFreeQueryView(APIView):
    """Refuses a query parameter that holds a NUL character, before it reaches a query.

    PostgreSQL text cannot hold one: the lookup would fail as a 500. The key is checked first,
    as on every route.
    """

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        for name, values in request.query_params.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                shown = name.replace("\x00", "\\u0000")
                raise InvalidRequestError(
                    f"Invalid value for '{shown}': null characters are not allowed.",
                    param=shown,
                    code="invalid_value",
                )


class OwnedViewSet(NulFreeQueryView, viewsets.GenericViewSet[Any]):
    """Looks objects up among the caller's own only: another owner's id is simply not found."""

    lookup_value_regex = ID_PATTERN

    # OpenAI's 404 for this kind of object; {id} is the id from the path.
    not_found_message = "No such object: {id}"
    not_found_param: str | None = None
    not_found_code: str | None = None

    def get_object(self) -> Any:
        lookup = self.kwargs[self.lookup_url_kwarg or self.lookup_field]
        obj = self.owned_object(lookup)
        if obj is None:
            raise NotFoundError(
                self.not_found_message.format(id=lookup),
                param=self.not_found_param,
                code=self.not_found_code,
            )
        return obj

    def owned_object(self, lookup: str) -> Any:
        # A slice, not .first(): no ORDER BY to compile and sort.
        return next(iter(self.get_queryset().filter(**{self.lookup_field: lookup})[:1]), None)


class FileViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnedViewSet):
    serializer_class = FileObjectSerializer
    pagination_class = OpenAICursorPagination
    # Uploads only; the other routes take no body.
    parser_classes = [MultiPartParser]
    throttle_classes = [UploadRateThrottle]
    lookup_url_kwarg = "file_id"
    not_found_message = "No such File object: {id}"
    not_found_param = "id"
    default_limit = 10_000
    max_limit = 10_000
    allow_order = True

    def get_queryset(self) -> QuerySet[File]:
        files = File.objects.owned_by(self.request.user)
        purpose = self.request.query_params.get("purpose")
        if purpose and self.action == "list":
            files = files.filter(purpose=purpose)
        return files

    @extend_schema(
        operation_id="listFiles",
        parameters=[
            OpenApiParameter("purpose", str, description="Only files with this purpose."),
        ],
        responses={200: FileObjectSerializer(many=True), **BAD_REQUEST},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(operation_id="retrieveFile", responses={200: FileObjectSerializer, **NOT_FOUND})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        operation_id="createFile",
        request=FileCreateSerializer,
        responses={
            200: FileObjectSerializer,
            **BAD_REQUEST,
            413: _error("The upload is over the size limit."),
            **RATE_LIMITED,
        },
    )
    def create(self, request: Request) -> Response:
        limit_upload_size(request)  # before request.data: the limit applies while parsing
        serializer = FileCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        expires_after = data.get("expires_after")
        file = services.file_create(
            owner=request.user,
            upload=data["file"],
            purpose=data["purpose"],
            expires_after_seconds=expires_after["seconds"] if expires_after else None,
        )
        return Response(FileObjectSerializer(file).data)

    @extend_schema(
        operation_id="deleteFile",
        responses={
            200: FileDeletedSerializer,
            **NOT_FOUND,
            409: _error("The file is the input of a batch that has not ended."),
        },
    )
    def destroy(self, request: Request, file_id: str) -> Response:
        services.file_delete(file=self.get_object())
        return Response(FileDeletedSerializer({"id": file_id, "deleted": True}).data)

    @extend_schema(
        operation_id="downloadFile",
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY, **NOT_FOUND},
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[renderers.JSONRenderer, DownloadRenderer],
    )
    def content(self, request: Request, file_id: str) -> FileResponse:
        file = self.get_object()
        # Always a download, never rendered: a JSONL of model output may contain markup.
        return FileResponse(
            file.content.open("rb"),
            as_attachment=True,
            filename=file.filename,
            content_type="application/octet-stream",
        )


# Clients poll GET /v1/batches/{id}: its lookup is compiled once (see batches.api.lookups).
BATCH_BY_ID_AND_OWNER = CompiledLookup(Batch, "id", "owner")


class BatchViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OwnedViewSet):
    serializer_class = BatchObjectSerializer
    pagination_class = OpenAICursorPagination
    lookup_url_kwarg = "batch_id"
    not_found_message = "No batch found with id '{id}'."
    parser_classes = [UnicodeJSONParser]
    throttle_classes = [BatchCreateRateThrottle]
    default_limit = 20
    max_limit = 100

    def get_queryset(self) -> QuerySet[Batch]:
        return Batch.objects.owned_by(self.request.user)

    def owned_object(self, lookup: str) -> Batch | None:
        # The same as owned_by(user).filter(pk=lookup), compiled once.
        return BATCH_BY_ID_AND_OWNER.get(lookup, self.request.user.pk)

    @extend_schema(
        operation_id="listBatches",
        responses={200: BatchObjectSerializer(many=True), **BAD_REQUEST},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        operation_id="retrieveBatch", responses={200: BatchObjectSerializer, **NOT_FOUND}
    )
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(
        operation_id="createBatch",
        request=BatchCreateSerializer,
        responses={200: BatchObjectSerializer, **BAD_REQUEST, **RATE_LIMITED},
    )
    def create(self, request: Request) -> Response:
        serializer = BatchCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        output_expires_after = data.get("output_expires_after")
        queued_requests_check(owner=request.user)
        batch = services.batch_create(
            owner=request.user,
            input_file_id=data["input_file_id"],
            endpoint=data["endpoint"],
            completion_window=data["completion_window"],
            metadata=data.get("metadata"),
            output_expires_after_seconds=(
                output_expires_after["seconds"] if output_expires_after else None
            ),
            priority=data["priority"],
        )
        return Response(BatchObjectSerializer(batch).data)

    @extend_schema(
        operation_id="cancelBatch",
        request=None,
        responses={
            200: BatchObjectSerializer,
            **NOT_FOUND,
            409: _error("The batch has already ended (the header x-should-retry is false)."),
        },
    )
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, batch_id: str) -> Response:
        batch = services.batch_cancel(batch=self.get_object())
        return Response(BatchObjectSerializer(batch).data)


class ModelListView(NulFreeQueryView):
    """The registered models (the same for every key). Not paginated, as at OpenAI."""

    @extend_schema(operation_id="listModels", responses={200: ModelListSerializer, **UNAUTHORIZED})
    def get(self, request: Request) -> Response:
        return Response(ModelListSerializer({"data": RegisteredModel.objects.enabled()}).data)


class ModelViewSet(OwnedViewSet):
    serializer_class = ModelObjectSerializer
    lookup_field = "name"
    lookup_url_kwarg = "model"
    not_found_message = "The model '{id}' does not exist or you do not have access to it."
    not_found_code = "model_not_found"
    # Hub ids contain a slash: "org/name"; names hold no NUL (ID_PATTERN).
    lookup_value_regex = r"[^/\x00]+(?:/[^/\x00]+)*"

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        return RegisteredModel.objects.enabled()

    @extend_schema(
        operation_id="retrieveModel",
        parameters=[OpenApiParameter("model", str, OpenApiParameter.PATH)],
        responses={200: ModelObjectSerializer, **NOT_FOUND},
    )
    def retrieve(self, request: Request, model: str) -> Response:
        return Response(ModelObjectSerializer(self.get_object()).data)


class UnknownRouteView(APIView):
    """Any other /v1 path answers as OpenAI does, in its envelope, rather than Django's HTML 404."""

    schema = None  # not an operation of the API

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # the key is checked first, as everywhere
        raise NotFoundError(f"Invalid URL ({request.method} {request.path})")
