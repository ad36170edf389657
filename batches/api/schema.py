"""How drf-spectacular describes our own field and authentication classes (loaded in ready())."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import (
    OpenApiAuthenticationExtension,
    OpenApiSerializerFieldExtension,
)
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.plumbing import ResolvedComponent

from batches.api.serializers import ConstantField, TimestampField
from batches.auth import ApiKeyAuthentication

# drf-spectacular's extension base classes and ResolvedComponent carry no annotations, hence
# the no-untyped-call ignores below.


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = ApiKeyAuthentication
    name = "ApiKeyAuth"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk-batch-<prefix>-<secret>",
            "description": "An API key from `manage.py create_api_key` or the admin.",
        }


class ConstantFieldSchema(OpenApiSerializerFieldExtension):  # type: ignore[no-untyped-call]
    target_class = ConstantField

    def map_serializer_field(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        # A named one-value enum per constant ("file", "batch", "list", …): inline enums on
        # properties all called "object" would collide in drf-spectacular's enum naming.
        value = self.target.value
        component = ResolvedComponent(  # type: ignore[no-untyped-call]
            name=f"{value.capitalize()}ObjectType",
            type=ResolvedComponent.SCHEMA,
            schema={"type": "string", "enum": [value]},
            object=f"constant:{value}",
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class TimestampFieldSchema(OpenApiSerializerFieldExtension):  # type: ignore[no-untyped-call]
    target_class = TimestampField

    def map_serializer_field(self, auto_schema: AutoSchema, direction: str) -> dict[str, Any]:
        # `nullable` comes from the field's allow_null, added by drf-spectacular itself.
        return {"type": "integer", "description": "Unix timestamp (seconds)."}
