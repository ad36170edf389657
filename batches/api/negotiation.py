"""Content negotiation that answers JSON rather than 406, as OpenAI's API does."""

from __future__ import annotations

from collections.abc import Iterable

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class JsonUnlessAskedOtherwise(DefaultContentNegotiation):
    """DRF's negotiation, but an ``Accept`` that no renderer satisfies (``text/html``, or a
    malformed value) gets the first renderer's answer instead of a 406: clients of OpenAI's API
    send whatever their HTTP library sends, and always get JSON. Views with several renderers
    (the OpenAPI schema's) still honour an ``Accept`` they can satisfy, and an unknown
    ``?format=`` is still DRF's 404."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        renderers = list(renderers)
        try:
            chosen: tuple[BaseRenderer, str] = super().select_renderer(
                request, renderers, format_suffix
            )
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
        return chosen
