"""/v1/webhook_endpoints: OpenAI's webhook endpoint API, so ``client.webhooks.create()`` works.

Routes and shapes follow the openai SDK (``client.webhooks.create / retrieve / update / list /
delete / rotate_secret``): updates are ``POST /webhook_endpoints/{id}``, so the routes are
spelled out here rather than left to a router. ``enabled`` is an extra field of ours (send it as
an extra body field) to pause an endpoint without deleting it.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.urls import path, re_path
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from batches import webhooks
from batches.api.errors import NotFoundError
from batches.api.pagination import OpenAICursorPagination
from batches.api.parsers import UnicodeJSONParser
from batches.api.views import BAD_REQUEST, ID_PATTERN, NOT_FOUND, NulFreeQueryView
from batches.models import WebhookEndpoint, WebhookEventType, unix


class WebhookEndpointSerializer(serializers.Serializer[WebhookEndpoint]):
    id = serializers.CharField()
    object = serializers.SerializerMethodField()
    created_at = serializers.SerializerMethodField()
    updated_at = serializers.SerializerMethodField()
    event_types = serializers.ListField(child=serializers.CharField())
    name = serializers.CharField()
    url = serializers.CharField()
    signing_secret_hint = serializers.CharField(source="secret_hint")
    enabled = serializers.BooleanField()

    def get_object(self, obj: WebhookEndpoint) -> str:
        return "webhook_endpoint"

    def get_created_at(self, obj: WebhookEndpoint) -> int:
        return int(obj.created_at.timestamp())

    def get_updated_at(self, obj: WebhookEndpoint) -> int | None:
        return unix(obj.updated_at)


class WebhookEndpointWithSecretSerializer(WebhookEndpointSerializer):
    signing_secret = serializers.CharField(source="secret")


class WebhookEndpointCreateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=255, required=False, default="", allow_blank=True)
    url = serializers.URLField(max_length=2048)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEventType.choices), allow_empty=False
    )


class WebhookEndpointUpdateSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=255, required=False, allow_blank=True)
    url = serializers.URLField(max_length=2048, required=False)
    event_types = serializers.ListField(
        child=serializers.ChoiceField(choices=WebhookEventType.choices),
        allow_empty=False,
        required=False,
    )
    enabled = serializers.BooleanField(required=False)


class RotateSecretSerializer(serializers.Serializer[Any]):
    keep_old_secret_active_for_24_hours = serializers.BooleanField(required=False, default=False)


class WebhookEndpointDeletedSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.CharField()
    deleted = serializers.BooleanField()


class WebhookEndpointViewSet(NulFreeQueryView, viewsets.GenericViewSet[WebhookEndpoint]):
    serializer_class = WebhookEndpointSerializer
    pagination_class = OpenAICursorPagination
    parser_classes = [UnicodeJSONParser]
    default_limit = 20
    max_limit = 100

    def get_queryset(self) -> QuerySet[WebhookEndpoint]:
        return WebhookEndpoint.objects.filter(owner_id=self.request.user.pk)

    def get_object(self) -> WebhookEndpoint:
        endpoint_id = self.kwargs["webhook_endpoint_id"]
        endpoint = self.get_queryset().filter(pk=endpoint_id).first()
        if endpoint is None:
            raise NotFoundError(f"No webhook endpoint found with id '{endpoint_id}'.")
        return endpoint

    @extend_schema(
        operation_id="listWebhookEndpoints",
        responses={200: WebhookEndpointSerializer(many=True), **BAD_REQUEST},
    )
    def list(self, request: Request) -> Response:
        page = self.paginate_queryset(self.get_queryset()) or []
        return self.get_paginated_response(self.get_serializer(page, many=True).data)

    @extend_schema(
        operation_id="createWebhookEndpoint",
        request=WebhookEndpointCreateSerializer,
        responses={200: WebhookEndpointWithSecretSerializer, **BAD_REQUEST},
    )
    def create(self, request: Request) -> Response:
        given = WebhookEndpointCreateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        endpoint = webhooks.webhook_endpoint_create(owner=request.user, **given.validated_data)
        return Response(WebhookEndpointWithSecretSerializer(endpoint).data)

    @extend_schema(
        operation_id="retrieveWebhookEndpoint",
        responses={200: WebhookEndpointSerializer, **NOT_FOUND},
    )
    def retrieve(self, request: Request, webhook_endpoint_id: str) -> Response:
        return Response(WebhookEndpointSerializer(self.get_object()).data)

    @extend_schema(
        operation_id="updateWebhookEndpoint",
        request=WebhookEndpointUpdateSerializer,
        responses={200: WebhookEndpointSerializer, **BAD_REQUEST, **NOT_FOUND},
    )
    def update(self, request: Request, webhook_endpoint_id: str) -> Response:
        given = WebhookEndpointUpdateSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        endpoint = webhooks.webhook_endpoint_update(
            endpoint=self.get_object(), **given.validated_data
        )
        return Response(WebhookEndpointSerializer(endpoint).data)

    @extend_schema(
        operation_id="deleteWebhookEndpoint",
        request=None,
        responses={200: WebhookEndpointDeletedSerializer, **NOT_FOUND},
    )
    def destroy(self, request: Request, webhook_endpoint_id: str) -> Response:
        endpoint = self.get_object()
        endpoint.delete()
        return Response(
            {"id": webhook_endpoint_id, "object": "webhook_endpoint.deleted", "deleted": True}
        )

    @extend_schema(
        operation_id="rotateWebhookEndpointSecret",
        request=RotateSecretSerializer,
        responses={200: WebhookEndpointWithSecretSerializer, **BAD_REQUEST, **NOT_FOUND},
    )
    def rotate_secret(self, request: Request, webhook_endpoint_id: str) -> Response:
        given = RotateSecretSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        endpoint = webhooks.webhook_endpoint_rotate_secret(
            endpoint=self.get_object(),
            keep_old_secret=given.validated_data["keep_old_secret_active_for_24_hours"],
        )
        return Response(WebhookEndpointWithSecretSerializer(endpoint).data)


urlpatterns = [
    path(
        "webhook_endpoints",
        WebhookEndpointViewSet.as_view({"get": "list", "post": "create"}),
        name="webhook-endpoint-list",
    ),
    re_path(
        rf"^webhook_endpoints/(?P<webhook_endpoint_id>{ID_PATTERN})$",
        WebhookEndpointViewSet.as_view({"get": "retrieve", "post": "update", "delete": "destroy"}),
        name="webhook-endpoint-detail",
    ),
    re_path(
        rf"^webhook_endpoints/(?P<webhook_endpoint_id>{ID_PATTERN})/rotate_secret$",
        WebhookEndpointViewSet.as_view({"post": "rotate_secret"}),
        name="webhook-endpoint-rotate-secret",
    ),
]
