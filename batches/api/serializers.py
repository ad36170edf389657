"""Input and output shapes of the Files, Batches and Models APIs (the openai SDK's types)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from batches.api.errors import InvalidRequest
from batches.models import Batch, File, unix
from batches.validation import json_type_name

MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 24 * 3600


def _oxford(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def invalid_value(param: str, value: Any, supported: list[str]) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value: '{value}'. Supported values are: {_oxford(supported)}.",
        param=param,
        code="invalid_value",
    )


@extend_schema_field({"type": "integer", "nullable": True})
class UnixTimestampField(serializers.Field):  # type: ignore[type-arg]
    def to_representation(self, value: Any) -> int | None:
        return unix(value)


def _constant(value: str) -> serializers.SerializerMethodField:
    field = extend_schema_field({"type": "string", "enum": [value]})(
        serializers.SerializerMethodField
    )
    return field()  # type: ignore[no-any-return]


# --- Files ------------------------------------------------------------------------------------


class FileObjectSerializer(serializers.Serializer[File]):
    id = serializers.CharField()
    object = _constant("file")
    bytes = serializers.IntegerField()
    created_at = serializers.SerializerMethodField()
    expires_at = UnixTimestampField()
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=File.Purpose.choices)
    status = serializers.ChoiceField(choices=File.Status.choices)
    status_details = serializers.CharField(allow_null=True)

    def get_object(self, obj: File) -> str:
        return "file"

    def get_created_at(self, obj: File) -> int:
        return int(obj.created_at.timestamp())


class FileDeletedSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = serializers.ChoiceField(choices=[("file", "file")])
    deleted = serializers.BooleanField()


class FileCreateSerializer(serializers.Serializer[Any]):
    file = serializers.FileField(allow_empty_file=True)
    purpose = serializers.CharField()
    expires_after_anchor = serializers.CharField(required=False)
    expires_after_seconds = serializers.IntegerField(required=False)

    def to_internal_value(self, data: Any) -> Any:
        # The SDK sends expires_after as form fields named expires_after[anchor] / [seconds].
        if hasattr(data, "copy"):
            data = data.copy()
            for part in ("anchor", "seconds"):
                key = f"expires_after[{part}]"
                if key in data:
                    data[f"expires_after_{part}"] = data[key]
        return super().to_internal_value(data)

    def validate_purpose(self, value: str) -> str:
        if value not in File.UPLOAD_PURPOSES:
            raise invalid_value("purpose", value, list(File.UPLOAD_PURPOSES))
        return value

    def validate_expires_after_anchor(self, value: str) -> str:
        if value != "created_at":
            raise invalid_value("expires_after.anchor", value, ["created_at"])
        return value

    def validate_expires_after_seconds(self, value: int) -> int:
        if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
            raise InvalidRequest(
                "Invalid 'expires_after.seconds': integer below minimum value or above maximum "
                f"value. Expected a value between {MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS}, "
                f"but got {value} instead.",
                param="expires_after.seconds",
                code="invalid_value",
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if ("expires_after_seconds" in attrs) != ("expires_after_anchor" in attrs):
            missing = "anchor" if "expires_after_seconds" in attrs else "seconds"
            raise InvalidRequest(
                f"Missing required parameter: 'expires_after.{missing}'.",
                param=f"expires_after.{missing}",
                code="missing_required_parameter",
            )
        return attrs


# --- Batches ----------------------------------------------------------------------------------


class BatchErrorSerializer(serializers.Serializer[Any]):
    code = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    param = serializers.CharField(allow_null=True)
    line = serializers.IntegerField(allow_null=True)


class BatchErrorsSerializer(serializers.Serializer[Any]):
    object = serializers.CharField()
    data = BatchErrorSerializer(many=True)


class RequestCountsSerializer(serializers.Serializer[Batch]):
    total = serializers.IntegerField(source="request_total")
    completed = serializers.IntegerField(source="request_completed")
    failed = serializers.IntegerField(source="request_failed")


class InputTokensDetailsSerializer(serializers.Serializer[Batch]):
    cached_tokens = serializers.IntegerField()


class OutputTokensDetailsSerializer(serializers.Serializer[Batch]):
    reasoning_tokens = serializers.IntegerField()


class UsageSerializer(serializers.Serializer[Batch]):
    input_tokens = serializers.IntegerField()
    input_tokens_details = InputTokensDetailsSerializer(source="*")
    output_tokens = serializers.IntegerField()
    output_tokens_details = OutputTokensDetailsSerializer(source="*")
    total_tokens = serializers.IntegerField()


class BatchObjectSerializer(serializers.Serializer[Batch]):
    id = serializers.CharField()
    object = _constant("batch")
    endpoint = serializers.CharField()
    errors = BatchErrorsSerializer(allow_null=True)
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=Batch.Status.choices)
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = serializers.SerializerMethodField()
    in_progress_at = UnixTimestampField()
    expires_at = UnixTimestampField()
    finalizing_at = UnixTimestampField()
    completed_at = UnixTimestampField()
    failed_at = UnixTimestampField()
    expired_at = UnixTimestampField()
    cancelling_at = UnixTimestampField()
    cancelled_at = UnixTimestampField()
    request_counts = RequestCountsSerializer(source="*")
    usage = UsageSerializer(source="*")
    model = serializers.CharField(allow_null=True)
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)

    def get_object(self, obj: Batch) -> str:
        return "batch"

    def get_created_at(self, obj: Batch) -> int:
        return int(obj.created_at.timestamp())

    def to_representation(self, instance: Batch) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["model"] = instance.model or None
        return data


class OutputExpiresAfterSerializer(serializers.Serializer[Any]):
    anchor = serializers.CharField()
    seconds = serializers.IntegerField()

    def validate_anchor(self, value: str) -> str:
        if value != "created_at":
            raise invalid_value("output_expires_after.anchor", value, ["created_at"])
        return value

    def validate_seconds(self, value: int) -> int:
        if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
            raise InvalidRequest(
                "Invalid 'output_expires_after.seconds': integer below minimum value or above "
                f"maximum value. Expected a value between {MIN_EXPIRY_SECONDS} and "
                f"{MAX_EXPIRY_SECONDS}, but got {value} instead.",
                param="output_expires_after.seconds",
                code="invalid_value",
            )
        return value


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": 512},
        "maxProperties": 16,
        "nullable": True,
    }
)
class MetadataField(serializers.Field):  # type: ignore[type-arg]
    """OpenAI's metadata: at most 16 string keys of 64 characters, string values of 512."""

    def to_internal_value(self, data: Any) -> dict[str, str] | None:
        if data is None:
            return None
        if not isinstance(data, dict):
            raise InvalidRequest(
                f"Invalid type for 'metadata': expected an object, but got "
                f"{json_type_name(data)} instead.",
                param="metadata",
                code="invalid_type",
            )
        if len(data) > 16:
            raise InvalidRequest(
                f"Invalid 'metadata': too many properties. Expected an object with at most 16 "
                f"properties, but got an object with {len(data)} properties instead.",
                param="metadata",
                code="object_above_max_properties",
            )
        for key, value in data.items():
            if len(key) > 64:
                raise InvalidRequest(
                    f"Invalid 'metadata': key '{key[:64]}…' is too long. Expected a key with a "
                    f"maximum length of 64, but got a key with length {len(key)} instead.",
                    param="metadata",
                    code="invalid_value",
                )
            if not isinstance(value, str):
                raise InvalidRequest(
                    f"Invalid type for 'metadata.{key}': expected a string, but got "
                    f"{json_type_name(value)} instead.",
                    param=f"metadata.{key}",
                    code="invalid_type",
                )
            if len(value) > 512:
                raise InvalidRequest(
                    f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                    f"length 512, but got a string with length {len(value)} instead.",
                    param=f"metadata.{key}",
                    code="string_above_max_length",
                )
        return dict(data)

    def to_representation(self, value: Any) -> Any:
        return value


class BatchCreateSerializer(serializers.Serializer[Any]):
    input_file_id = serializers.CharField(max_length=64)
    endpoint = serializers.CharField()
    completion_window = serializers.CharField()
    metadata = MetadataField(required=False, allow_null=True)
    output_expires_after = OutputExpiresAfterSerializer(required=False)
    priority = serializers.IntegerField(
        required=False,
        default=0,
        min_value=-1000,
        max_value=1000,
        help_text="Not in OpenAI's API (send it as an extra body field): higher runs sooner.",
    )

    def validate_endpoint(self, value: str) -> str:
        if value not in Batch.Endpoint.values:
            raise invalid_value("endpoint", value, list(Batch.Endpoint.values))
        return value

    def validate_completion_window(self, value: str) -> str:
        allowed = list(settings.BATCH_COMPLETION_WINDOWS)
        if value not in allowed:
            raise invalid_value("completion_window", value, allowed)
        return value


# --- Models -----------------------------------------------------------------------------------


class ModelObjectSerializer(serializers.Serializer[Any]):
    id = serializers.CharField(source="name")
    object = _constant("model")
    created = serializers.SerializerMethodField()
    owned_by = serializers.SerializerMethodField()

    def get_object(self, obj: Any) -> str:
        return "model"

    @extend_schema_field(OpenApiTypes.INT)
    def get_created(self, obj: Any) -> int:
        return int(obj.created_at.timestamp())

    @extend_schema_field(OpenApiTypes.STR)
    def get_owned_by(self, obj: Any) -> str:
        return "batch-server"


class ModelListSerializer(serializers.Serializer[Any]):
    object = _constant("list")
    data = ModelObjectSerializer(many=True)
