"""Request bodies: JSON that is also valid Unicode text."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import IO, Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class UnicodeJSONParser(JSONParser):
    """DRF's JSON parser, refusing strings that cannot be written as UTF-8.

    JSON's escapes can spell a lone surrogate (``"\\ud800"``), which Python decodes but no UTF-8
    text can hold: stored, it broke every later response that showed it (a 500 when the JSON
    renderer encodes it). Refused here once, as unparseable text, for every field at once.
    """

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        data = super().parse(stream, media_type, parser_context)
        try:
            json.dumps(data, ensure_ascii=False).encode()
        except UnicodeEncodeError as error:
            raise ParseError(
                "We could not parse the JSON body of your request: it holds a lone surrogate "
                f"(\\u{ord(error.object[error.start]):04x}), which is not valid Unicode text."
            ) from None
        return data
