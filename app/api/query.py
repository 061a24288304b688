"""A route's query string validated as one pydantic model.

FastAPI validates each declared query parameter apart, a lookup and a validator call per
parameter in Python: /recommend's seven cost 95 us per request over a one-parameter route,
36 us as one model (`python -m bench.query_params`, docs/BENCHMARKS.md, "Query
parameters"). A model validates them in one call of pydantic-core, under the same rules,
and a bad value gets the same 422 body (locations `query.<name>`). `openapi_parameters`
writes the model's fields into the OpenAPI schema as FastAPI writes declared parameters,
so the documentation (and the schema-driven fuzz tests) still see every parameter.

Percent-encoded bytes are read as UTF-8, strictly. Starlette replaces invalid UTF-8 with
U+FFFD: `user_id=%FF` and `user_id=%FE` would be one user (one A/B bucket, one feedback
history). Here they are a 422. (Raw non-ASCII bytes never get this far: the HTTP parser
refuses them with a 400.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

Model = TypeVar("Model", bound=BaseModel)


def query_model(model: type[Model]) -> Callable[[Request], Awaitable[Model]]:
    """A dependency giving the request's query string as `model`. A repeated name counts
    with its last value, as FastAPI reads a scalar parameter; unknown names are ignored."""

    # async: FastAPI runs a plain function dependency in a worker thread.
    async def parse(request: Request) -> Model:
        try:
            return model.model_validate(_query_params(request.scope["query_string"]))
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            raise RequestValidationError(
                [{**error, "loc": ("query", *error["loc"])} for error in errors]
            ) from None

    return parse


def _query_params(raw: bytes) -> dict[str, str]:
    """Name -> last value, percent-encoded bytes read as UTF-8 (a 422 when they are not)."""
    try:
        return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 ({exc.reason}); send ids as percent-encoded UTF-8"
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query",), "msg": message, "input": None}]
        ) from None


def openapi_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """OpenAPI parameter objects (`in: query`) for `model`'s fields."""
    schema = model.model_json_schema()
    required = set(schema.get("required", ()))
    parameters = []
    for name, field_schema in schema["properties"].items():
        parameter = {"name": name, "in": "query", "required": name in required}
        # FastAPI leaves out a default of None (an optional parameter's absence says it).
        parameter["schema"] = {
            key: value
            for key, value in field_schema.items()
            if not (key == "default" and value is None)
        }
        if "description" in field_schema:
            parameter["description"] = field_schema["description"]
        parameters.append(parameter)
    return parameters
