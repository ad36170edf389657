"""Template helpers of the curation pages; every value they return is escaped by templates."""

from __future__ import annotations

import re
from typing import Any

from django import template

from curation.rendering import format_answer

register = template.Library()


@register.filter
def answer(value: Any) -> str:
    """An answer as text: lists joined, structured values as JSON."""
    return format_answer(value)


@register.filter
def lookup(mapping: Any, key: str) -> Any:
    return mapping.get(key) if isinstance(mapping, dict) else None


@register.filter
def option_class(option: Any) -> str:
    """A CSS class per option (``rating-strong``): hooks for a schema's custom CSS."""
    slug = re.sub(r"[^a-z0-9]+", "-", str(option).lower()).strip("-")
    return f"rating-{slug}" if slug else ""


@register.filter
def duration(seconds: float | None) -> str:
    if seconds is None:
        return "\N{EN DASH}"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def percent(value: float | None) -> str:
    return "\N{EN DASH}" if value is None else f"{value:.0f}%"


@register.simple_tag
def query(querystring: str, **params: Any) -> str:
    """``querystring`` with ``params`` set (None removes one): for pagination links."""
    from django.http import QueryDict

    merged = QueryDict(querystring, mutable=True)
    for key, value in params.items():
        merged.pop(key, None)
        if value not in (None, ""):
            merged[key] = str(value)
    return merged.urlencode()
