"""Checks a cached /recommend fragment read back from Redis before it reaches a response.

Redis is shared and not trusted: anything able to write a key could otherwise make the
service answer invalid JSON or inject fields. The fragment (`"items":[...],"fallback":...`,
see app/api/recommend.py) is parsed against the response schema and written out again, so
only the fields of the contract leave, as valid JSON. Anything else is a miss.
"""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import ConfigDict, Field, ValidationError, create_model

from app.schemas import RecommendedItem, RecommendResponse

# Built from the response model's own fields, so the check follows the contract.
_FALLBACK: Any = RecommendResponse.model_fields["fallback"].annotation
_Fragment: Any = create_model(
    "_Fragment",
    __config__=ConfigDict(extra="forbid"),
    items=(list[RecommendedItem], Field(max_length=100)),
    fallback=(_FALLBACK, ...),
)


def clean_fragment(value: bytes) -> bytes | None:
    """The fragment re-serialised from its validated fields, or None when it is not one."""
    try:
        fragment = _Fragment.model_validate_json(b"{" + value + b"}")
    except ValidationError:
        return None
    return orjson.dumps(fragment.model_dump(mode="json"))[1:-1]
