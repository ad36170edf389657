"""OpenAI's cursor lists: ``{object: "list", data, first_id, last_id, has_more}``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.db.models import QuerySet
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from batches.api.errors import InvalidRequestError


def list_body(data: Sequence[dict[str, Any]], *, has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": list(data),
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


class OpenAICursorPagination(BasePagination):
    """Cursor pagination over time-ordered primary keys (see batches.models._time_ordered_id).

    Views set ``default_limit``, ``max_limit`` and ``allow_order`` (files let clients choose
    asc/desc; batches are always newest first).
    """

    default_limit = 20
    max_limit = 100
    allow_order = False

    def __init__(self) -> None:
        self.has_more = False

    def _limit(self, request: Request, view: APIView | None) -> int:
        default = getattr(view, "default_limit", self.default_limit)
        maximum = getattr(view, "max_limit", self.max_limit)
        raw = request.query_params.get("limit")
        if raw is None or raw == "":
            return int(default)
        try:
            limit = int(raw)
        except ValueError:
            raise InvalidRequestError(
                f"Invalid 'limit': expected an integer, but got '{raw}' instead.",
                param="limit",
                code="invalid_type",
            ) from None
        if not 1 <= limit <= maximum:
            raise InvalidRequestError(
                f"Invalid 'limit': integer below minimum value or above maximum value. "
                f"Expected a value between 1 and {maximum}, but got {limit} instead.",
                param="limit",
                code="invalid_value",
            )
        return limit

    def _descending(self, request: Request, view: APIView | None) -> bool:
        if not getattr(view, "allow_order", self.allow_order):
            return True
        order = request.query_params.get("order", "desc")
        if order not in {"asc", "desc"}:
            raise InvalidRequestError(
                f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.",
                param="order",
                code="invalid_value",
            )
        return order == "desc"

    def paginate_queryset(
        self,
        queryset: QuerySet[Any, Any] | Sequence[Any],
        request: Request,
        view: APIView | None = None,
    ) -> list[Any]:
        if not isinstance(queryset, QuerySet):
            raise TypeError("OpenAICursorPagination pages querysets, ordered by primary key.")
        limit = self._limit(request, view)
        descending = self._descending(request, view)
        after = request.query_params.get("after")
        if after:
            queryset = queryset.filter(**{"pk__lt" if descending else "pk__gt": after})
        queryset = queryset.order_by("-pk" if descending else "pk")
        rows = list(queryset[: limit + 1])
        self.has_more = len(rows) > limit
        return rows[:limit]

    def get_paginated_response(self, data: Any) -> Response:
        return Response(list_body(data, has_more=self.has_more))

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["object", "data", "first_id", "last_id", "has_more"],
            "properties": {
                "object": {"type": "string", "enum": ["list"]},
                "data": schema,
                "first_id": {"type": "string", "nullable": True},
                "last_id": {"type": "string", "nullable": True},
                "has_more": {"type": "boolean"},
            },
        }

    def get_schema_operation_parameters(self, view: APIView) -> list[dict[str, Any]]:
        maximum = getattr(view, "max_limit", self.max_limit)
        params: list[dict[str, Any]] = [
            {
                "name": "after",
                "in": "query",
                "required": False,
                "description": "A cursor: the id of the last object of the previous page.",
                "schema": {"type": "string"},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": f"How many objects to return, 1 to {maximum}.",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": maximum,
                    "default": getattr(view, "default_limit", self.default_limit),
                },
            },
        ]
        if getattr(view, "allow_order", self.allow_order):
            params.append(
                {
                    "name": "order",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"},
                }
            )
        return params
