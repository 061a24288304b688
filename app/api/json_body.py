"""JSON request bodies read strictly: an ambiguous or unreadable body is a 422, never a guess.

Python's JSON reader, and so Starlette's `Request.json`, keeps the last of repeated keys:
`{"user_id": "1", "user_id": "2"}` would rate user 2 for a client that may have meant user
1, and nothing would say so. RFC 8259 leaves repeated names to the reader; the service
refuses them, as it refuses other ambiguous input. A body that is not UTF-8, is nested
beyond the reader's depth or holds an integer beyond Python's digit limit is refused the
same way, instead of FastAPI's bare 400 or a 500.

An object may have at most MAX_OBJECT_KEYS keys: no request model has a tenth of them,
and a 1 MiB body of unknown keys would otherwise cost pydantic one error per key, built on
the event loop and formatted into an answer of megabytes.

Every failure is a `json.JSONDecodeError`, which FastAPI answers through app.errors as
422 "malformed JSON body: <reason>".
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

MAX_OBJECT_KEYS = 64
_KEY_SHOWN = 64  # a hostile key can be up to the body limit long; the message stays short


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:
        raise json.JSONDecodeError(
            f"an object with {len(pairs)} keys, at most {MAX_OBJECT_KEYS}", "", 0
        )
    obj = dict(pairs)
    if len(obj) < len(pairs):  # only then look for which key repeats
        key = next(k for k, n in Counter(k for k, _ in pairs).items() if n > 1)
        raise json.JSONDecodeError(f"duplicate key {key[:_KEY_SHOWN]!r}", "", 0)
    return obj


def parse_json(body: bytes) -> Any:
    """`body` as JSON with repeated keys refused; every failure is a `JSONDecodeError`."""
    try:
        return json.loads(body, object_pairs_hook=_unique)
    except json.JSONDecodeError:
        raise
    except UnicodeDecodeError as exc:
        raise json.JSONDecodeError(f"not UTF-8 ({exc.reason})", "", 0) from None
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except ValueError as exc:  # an integer over sys.get_int_max_str_digits() digits
        raise json.JSONDecodeError(str(exc), "", 0) from None


class StrictJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class StrictJsonRoute(APIRoute):
    """Reads bodies through `StrictJsonRequest`; subclasses look at a request in `inspect`.

    The strict request must wrap the request before anything reads the body (Starlette
    does not keep a body read through another request object), so this is the only
    class here that overrides `get_route_handler`.
    """

    async def inspect(self, request: Request) -> None:
        """Refuse `request` (raise HTTPException) before FastAPI validates it; default: no."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler  # reads no body (an admin GET, the benchmark floor): nothing to do

        async def strict(request: Request) -> Response:
            request = StrictJsonRequest(request.scope, request.receive)
            await self.inspect(request)
            return await handler(request)

        return strict
