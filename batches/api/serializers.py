"""Input and output shapes of the Files, Batches and Models APIs (the openai SDK's types)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from batches.api.errors import InvalidRequestError
from batches.models import Batch, File, unix
from batches.validation import json_type_name
from inference.models import RegisteredModel

MIN_EXPIRY_SECONDS = 3600
MAX_EXPIRY_SECONDS = 30 * 24 * 3600
METADATA_MAX_KEYS = 16
METADATA_MAX_KEY_LENGTH = 64
METADATA_MAX_VALUE_LENGTH = 512


def _oxford(values: list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def invalid_value(param: str, value: Any, supported: list[str]) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid value: '{value}'. Supported values are: {_oxford(supported)}.",
        param=param,
        code="invalid_value",
    )


def _param(field: serializers.Field[Any, Any, Any, Any]) -> str:
    """The dotted path of a bound field, as OpenAI names params: ``output_expires_after.anchor``."""
    names: list[str] = []
    node: Any = field
    while node is not None and getattr(node, "field_name", None):
        names.append(node.field_name)
        node = node.parent
    return ".".join(reversed(names))


# --- Fields -----------------------------------------------------------------------------------


class ConstantField(serializers.Field[str, str, str, Any]):
    """A string that never varies, such as ``object: "batch"``; documented as a one-value enum."""

    def __init__(self, value: str) -> None:
        super().__init__(source="*")
        self.value = value

    def to_representation(self, value: Any) -> str:
        return self.value


class TimestampField(serializers.Field[datetime, Any, int | None, Any]):
    """A datetime as Unix seconds, as every OpenAI ``*_at`` field is."""

    def to_representation(self, value: datetime) -> int | None:
        return unix(value)


class OpenAIChoiceField(serializers.ChoiceField):
    """A choice whose refusal reads as OpenAI's: "Invalid value: 'x'. Supported values are: …"."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str) or data not in self.choices:
            raise invalid_value(_param(self), data, [str(choice) for choice in self.choices])
        return data


# --- Errors -----------------------------------------------------------------------------------


class ErrorDetailSerializer(serializers.Serializer[Any]):
    message = serializers.CharField()
    type = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True)


@extend_schema_serializer(component_name="ErrorResponse")
class ErrorSerializer(serializers.Serializer[Any]):
    """OpenAI's error envelope, the body of every 4xx and 5xx answer."""

    error = ErrorDetailSerializer()


# --- Files ------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="FileObject")
class FileObjectSerializer(serializers.Serializer[File]):
    id = serializers.CharField()
    object = ConstantField("file")
    bytes = serializers.IntegerField()
    created_at = TimestampField()
    expires_at = TimestampField(allow_null=True)
    filename = serializers.CharField()
    purpose = serializers.ChoiceField(choices=File.Purpose.choices)
    status = serializers.ChoiceField(choices=File.Status.choices)
    status_details = serializers.CharField(allow_null=True)


@extend_schema_serializer(component_name="FileDeleted")
class FileDeletedSerializer(serializers.Serializer[Any]):
    id = serializers.CharField()
    object = ConstantField("file")
    deleted = serializers.BooleanField()


class ExpiresAfterSerializer(serializers.Serializer[Any]):
    """OpenAI's expiration policy, of uploads (expires_after) and outputs (output_expires_after)."""

    anchor = OpenAIChoiceField(choices=["created_at"])
    seconds = serializers.IntegerField(help_text="Between 3600 (1 hour) and 2592000 (30 days).")

    def validate_seconds(self, value: int) -> int:
        if not MIN_EXPIRY_SECONDS <= value <= MAX_EXPIRY_SECONDS:
            param = _param(self.fields["seconds"])
            raise InvalidRequestError(
                f"Invalid '{param}': integer below minimum value or above maximum value. "
                f"Expected a value between {MIN_EXPIRY_SECONDS} and {MAX_EXPIRY_SECONDS}, "
                f"but got {value} instead.",
                param=param,
                code="invalid_value",
            )
        return value


class FileCreateSerializer(serializers.Serializer[Any]):
    file = serializers.FileField(allow_empty_file=True)
    purpose = OpenAIChoiceField(choices=list(File.UPLOAD_PURPOSES))
    expires_after = ExpiresAfterSerializer(required=False)

    def to_internal_value(self, data: Any) -> Any:
        # Multipart forms are flat: the SDK sends expires_after as the fields
        # expires_after[anchor] and expires_after[seconds]. A plain dict of the last value of each
        # field (never QueryDict.copy, which would deep-copy the upload itself).
        fields = {key: data.get(key) for key in data}
        nested = {
            part: fields.pop(f"expires_after[{part}]")
            for part in ("anchor", "seconds")
            if f"expires_after[{part}]" in fields
        }
        if nested:
            fields["expires_after"] = nested
        return super().to_internal_value(fields)


# --- Batches ----------------------------------------------------------------------------------


@extend_schema_serializer(component_name="BatchError")
class BatchErrorSerializer(serializers.Serializer[Any]):
    code = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    param = serializers.CharField(allow_null=True)
    line = serializers.IntegerField(allow_null=True)


@extend_schema_serializer(component_name="BatchErrors")
class BatchErrorsSerializer(serializers.Serializer[Any]):
    object = ConstantField("list")
    # The stubs see Serializer.data here; DRF's metaclass moves declared fields off the class.
    data = BatchErrorSerializer(many=True)  # type: ignore[assignment]


@extend_schema_serializer(component_name="BatchRequestCounts")
class RequestCountsSerializer(serializers.Serializer[Batch]):
    total = serializers.IntegerField(source="request_total")
    completed = serializers.IntegerField(source="request_completed")
    failed = serializers.IntegerField(source="request_failed")


class InputTokensDetailsSerializer(serializers.Serializer[Batch]):
    cached_tokens = serializers.IntegerField()


class OutputTokensDetailsSerializer(serializers.Serializer[Batch]):
    reasoning_tokens = serializers.IntegerField()


@extend_schema_serializer(component_name="BatchUsage")
class UsageSerializer(serializers.Serializer[Batch]):
    input_tokens = serializers.IntegerField()
    input_tokens_details = InputTokensDetailsSerializer(source="*")
    output_tokens = serializers.IntegerField()
    output_tokens_details = OutputTokensDetailsSerializer(source="*")
    total_tokens = serializers.IntegerField()


@extend_schema_serializer(component_name="Batch")
class BatchObjectSerializer(serializers.Serializer[Batch]):
    id = serializers.CharField()
    object = ConstantField("batch")
    endpoint = serializers.CharField()
    # The stubs see Serializer.errors here; DRF's metaclass moves declared fields off the class.
    errors = BatchErrorsSerializer(allow_null=True)  # type: ignore[assignment]
    input_file_id = serializers.CharField()
    completion_window = serializers.CharField()
    status = serializers.ChoiceField(choices=Batch.Status.choices)
    output_file_id = serializers.CharField(allow_null=True)
    error_file_id = serializers.CharField(allow_null=True)
    created_at = TimestampField()
    in_progress_at = TimestampField(allow_null=True)
    expires_at = TimestampField(allow_null=True)
    finalizing_at = TimestampField(allow_null=True)
    completed_at = TimestampField(allow_null=True)
    failed_at = TimestampField(allow_null=True)
    expired_at = TimestampField(allow_null=True)
    cancelling_at = TimestampField(allow_null=True)
    cancelled_at = TimestampField(allow_null=True)
    request_counts = RequestCountsSerializer(source="*")
    usage = UsageSerializer(source="*")
    model = serializers.SerializerMethodField()
    metadata = serializers.DictField(child=serializers.CharField(), allow_null=True)

    def get_model(self, obj: Batch) -> str | None:
        # Known once validation has read the file; null before, as OpenAI answers.
        return obj.model or None

    def to_representation(self, instance: Batch) -> dict[str, Any]:
        # Built directly: DRF's field-by-field walk deep-copies the nested fields for every
        # batch, and was a third of the time of GET /v1/batches/{id}, the route clients poll.
        # The declared fields above still define the OpenAPI schema; a test keeps the two equal.
        return batch_object(instance)


def batch_object(batch: Batch) -> dict[str, Any]:
    """The SDK's ``Batch`` for one row, as BatchObjectSerializer's declared fields describe it."""
    return {
        "id": batch.id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": batch.errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": batch.status,
        "output_file_id": batch.output_file_id,
        "error_file_id": batch.error_file_id,
        "created_at": unix(batch.created_at),
        "in_progress_at": unix(batch.in_progress_at),
        "expires_at": unix(batch.expires_at),
        "finalizing_at": unix(batch.finalizing_at),
        "completed_at": unix(batch.completed_at),
        "failed_at": unix(batch.failed_at),
        "expired_at": unix(batch.expired_at),
        "cancelling_at": unix(batch.cancelling_at),
        "cancelled_at": unix(batch.cancelled_at),
        "request_counts": {
            "total": batch.request_total,
            "completed": batch.request_completed,
            "failed": batch.request_failed,
        },
        "usage": {
            "input_tokens": batch.input_tokens,
            "input_tokens_details": {"cached_tokens": batch.cached_tokens},
            "output_tokens": batch.output_tokens,
            "output_tokens_details": {"reasoning_tokens": batch.reasoning_tokens},
            "total_tokens": batch.total_tokens,
        },
        "model": batch.model or None,
        "metadata": batch.metadata,
    }


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE_LENGTH},
        "maxProperties": METADATA_MAX_KEYS,
        "nullable": True,
    }
)
class MetadataField(serializers.Field[dict[str, str] | None, Any, Any, Any]):
    """OpenAI's metadata: at most 16 string keys of 64 characters, string values of 512."""

    def to_internal_value(self, data: Any) -> dict[str, str] | None:
        if not isinstance(data, dict):
            raise InvalidRequestError(
                f"Invalid type for 'metadata': expected an object, but got "
                f"{json_type_name(data)} instead.",
                param="metadata",
                code="invalid_type",
            )
        if len(data) > METADATA_MAX_KEYS:
            raise InvalidRequestError(
                f"Invalid 'metadata': too many properties. Expected an object with at most "
                f"{METADATA_MAX_KEYS} properties, but got an object with {len(data)} properties "
                "instead.",
                param="metadata",
                code="object_above_max_properties",
            )
        for key, value in data.items():
            if len(key) > METADATA_MAX_KEY_LENGTH:
                raise InvalidRequestError(
                    f"Invalid 'metadata': key '{key[:METADATA_MAX_KEY_LENGTH]}…' is too long. "
                    f"Expected a key with a maximum length of {METADATA_MAX_KEY_LENGTH}, but got "
                    f"a key with length {len(key)} instead.",
                    param="metadata",
                    code="invalid_value",
                )
            if not isinstance(value, str):
                raise InvalidRequestError(
                    f"Invalid type for 'metadata.{key}': expected a string, but got "
                    f"{json_type_name(value)} instead.",
                    param=f"metadata.{key}",
                    code="invalid_type",
                )
            if "\x00" in key or "\x00" in value:
                # PostgreSQL's jsonb cannot hold one: refused here rather than a 500 on save.
                raise InvalidRequestError(
                    "Invalid 'metadata': null characters are not allowed in keys or values.",
                    param="metadata",
                    code="invalid_value",
                )
            if len(value) > METADATA_MAX_VALUE_LENGTH:
                raise InvalidRequestError(
                    f"Invalid 'metadata.{key}': string too long. Expected a string with maximum "
                    f"length {METADATA_MAX_VALUE_LENGTH}, but got a string with length "
                    f"{len(value)} instead.",
                    param=f"metadata.{key}",
                    code="string_above_max_length",
                )
        return dict(data)


class BatchCreateSerializer(serializers.Serializer[Any]):
    input_file_id = serializers.CharField(max_length=64)
    endpoint = OpenAIChoiceField(choices=Batch.Endpoint.values)
    completion_window = OpenAIChoiceField(choices=["24h"])
    metadata = MetadataField(required=False, allow_null=True)
    output_expires_after = ExpiresAfterSerializer(required=False)
    priority = serializers.IntegerField(
        required=False,
        default=0,
        min_value=-1000,
        max_value=1000,
        help_text="Not in OpenAI's API (send it as an extra body field): higher runs sooner.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Read per request, not at import, so the setting (and tests overriding it) take effect.
        windows: Any = self.fields["completion_window"]
        windows.choices = list(settings.BATCH_COMPLETION_WINDOWS)


# --- Models -----------------------------------------------------------------------------------


@extend_schema_serializer(component_name="Model")
class ModelObjectSerializer(serializers.Serializer[RegisteredModel]):
    id = serializers.CharField(source="name")
    object = ConstantField("model")
    created = TimestampField(source="created_at")
    owned_by = serializers.SerializerMethodField()

    def get_owned_by(self, obj: RegisteredModel) -> str:
        return "batch-server"


@extend_schema_serializer(component_name="ModelList")
class ModelListSerializer(serializers.Serializer[Any]):
    object = ConstantField("list")
    # The stubs see Serializer.data here; DRF's metaclass moves declared fields off the class.
    data = ModelObjectSerializer(many=True)  # type: ignore[assignment]
