"""Request and response bodies of the HTTP contract.

Responses are serialised with orjson for speed; these models document them in OpenAPI and
validate requests. Ids may arrive as strings or integers and always leave as strings.
"""

from __future__ import annotations

from typing import Annotated, Literal, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from contract.ids import MAX_ID_LENGTH, control_character


def _raw_id(value: object) -> str:
    # bool is an int subclass in Python; without this check `true` would become user "1".
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError("must be a string or an integer id")
    text = str(value).strip()
    if not text or len(text) > MAX_ID_LENGTH:
        raise ValueError(f"must be 1 to {MAX_ID_LENGTH} characters")
    control = control_character(text)
    if control is not None:
        raise ValueError(f"must not hold control characters (found {control})")
    # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 encoder (hashing,
    # Redis, the response) takes: refused here rather than failing later as a 500.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode text (a lone surrogate was sent)") from None
    return text


RawId = Annotated[
    str,
    BeforeValidator(_raw_id),
    Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="raw dataset id (string or integer; surrounding spaces are ignored)",
    ),
]


def _json_number(value: object) -> object:
    # pydantic's lax mode reads `true` as 1 and "4" as 4.0: a body that says a boolean or a
    # string where a number belongs is a client bug, not a rating or a percentage.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


JsonNumber = Annotated[float, BeforeValidator(_json_number)]


def _digits(value: object) -> object:
    # pydantic's lax int reads "2.0", "1_0" and " 1" from a query string too; a count or an
    # age is written in plain digits.
    if isinstance(value, str) and not (value.isascii() and value.isdecimal()):
        raise ValueError("must be a whole number written in digits")
    return value


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: RawId
    item_id: RawId


class PredictRequest(BaseModel):
    """Either one pair (`user_id`, `item_id`) or `pairs`, never both."""

    model_config = ConfigDict(extra="forbid")

    user_id: RawId | None = None
    item_id: RawId | None = None
    # At most MAX_BATCH_PAIRS, refused before validation (app/api/batch_limit.py).
    # fail_fast: a wrong batch is reported by its first wrong pair. Reporting every one
    # made a 1 MiB batch of unknown keys cost pydantic tens of thousands of errors.
    pairs: list[Pair] | None = Field(default=None, min_length=1, fail_fast=True)

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        single = self.user_id is not None or self.item_id is not None
        if self.pairs is not None and single:
            raise ValueError("give either user_id and item_id, or pairs, not both")
        if self.pairs is None and (self.user_id is None or self.item_id is None):
            raise ValueError("give user_id and item_id, or a non-empty list of pairs")
        return self


class RatingResponse(BaseModel):
    user_id: str
    item_id: str
    rating: float
    variant: Literal["teacher", "student"]
    model_version: str


class BatchRatingResponse(BaseModel):
    ratings: list[float]
    variant: Literal["teacher", "student"]
    model_version: str


class RecommendQuery(BaseModel):
    """GET /recommend's query string (validated in one call: app/api/query.py)."""

    user_id: RawId = Field(description="raw user id")
    k: Annotated[int, Field(ge=1, le=100), BeforeValidator(_digits)] = 10
    exclude_seen: bool = True
    age: Annotated[int, Field(ge=0, le=150), BeforeValidator(_digits)] | None = Field(
        default=None, description="cold start"
    )
    gender: str | None = Field(default=None, max_length=32, description="cold start")
    occupation: str | None = Field(default=None, max_length=64, description="cold start")
    zip: str | None = Field(default=None, max_length=16, description="cold start")


class RecommendedItem(BaseModel):
    item_id: str
    title: str
    score: float
    rating: float


class RecommendResponse(BaseModel):
    request_id: str = Field(
        description="name it in POST /feedback: the X-Request-ID sent, else (or when that id "
        "already names another list, another user's or this user's with other items) a new id"
    )
    user_id: str
    variant: Literal["teacher", "student"]
    model_version: str
    items: list[RecommendedItem]
    cached: bool
    fallback: Literal["popular", "cold_start"] | None


class RoutingUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    student_percent: JsonNumber | None = Field(default=None, ge=0, le=100)
    salt: str | None = Field(default=None, min_length=1, max_length=200)


class RoutingView(BaseModel):
    student_percent: float
    salt: str


class RoutingChange(RoutingView):
    shared: bool = Field(description="whether the change reached the other workers via Redis")


class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_dir: str | None = Field(
        default=None, min_length=1, description="bundle to load; default MODEL_DIR"
    )


class ErrorBody(BaseModel):
    detail: str
    # The X-Request-ID of the answer, to find its log lines.
    request_id: str | None = None
