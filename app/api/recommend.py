"""GET /recommend: top-k items for a user, cached per (bundle, variant, user, k, flag).

An async handler: validation, variant choice (a hash), key building and the in-process
cache lookup run on the event loop; a miss there goes to a worker thread, where the Redis
lookup and the model run (both blocking) happen, unless it is cheap and nothing would
block (`_miss`): then the model runs on the loop too.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Annotated

import anyio.to_thread
import orjson
from fastapi import APIRouter, Depends
from starlette.responses import Response

from app.admission import AdmissionGate
from app.api.deps import ScoringDep, VariantOverride
from app.api.query import openapi_parameters, query_model
from app.cache import RecommendationCache
from app.feedback import recommend_hook
from app.logging_setup import request_id_var
from app.responses import JSONBytesResponse
from app.schemas import ErrorBody, RecommendQuery, RecommendResponse
from app.state import Recommendation, ServingState

router = APIRouter()

RecommendQueryDep = Annotated[RecommendQuery, Depends(query_model(RecommendQuery))]


def _fragment(recommendation: Recommendation) -> bytes:
    """The cacheable middle of the response: `"items":[...],"fallback":...`."""
    body = orjson.dumps({"items": recommendation.items, "fallback": recommendation.fallback})
    return body[1:-1]


def _cache_key(state: ServingState, *, variant: str, who: str, k: int, exclude_seen: bool) -> str:
    # The bundle's content hash and the model file are part of the key, so a reload (even
    # of a rebuilt bundle under the same version name) or a switch to the INT8 student can
    # never serve a list computed by another model.
    model_file = state.runner(variant).file
    return (
        f"rec:v2:{state.version}:{state.bundle.content_hash[:16]}:{variant}:{model_file}:"
        f"{who}:k{k}:x{int(exclude_seen)}"
    )


def _unknown_user(
    state: ServingState, variant: str, demographics: Mapping[str, object], *, k: int
) -> tuple[str, Callable[[], Recommendation]]:
    """Cache identity and computation for a user the bundle does not know."""
    row = state.encode_demographics(demographics)
    if row is None:
        return "popular", partial(state.recommend_popular, variant, k=k)
    who = "cold:" + ",".join(str(v) for v in row.tolist())
    return who, partial(state.recommend_cold_start, variant, user_row=row, k=k)


@router.get(
    "/recommend",
    response_model=RecommendResponse,
    responses={422: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    openapi_extra={"parameters": openapi_parameters(RecommendQuery)},
)
async def recommend(
    scoring: ScoringDep, query: RecommendQueryDep, x_variant: VariantOverride = None
) -> Response:
    """Known user: the catalogue minus seen items, ranked by the model.
    Unknown user with demographics: the model's cold-start path (`fallback: cold_start`).
    Unknown user without them: the popularity list (`fallback: popular`)."""
    state, cache = scoring.state, scoring.cache
    k, exclude_seen = query.k, query.exclude_seen
    raw_user = query.user_id.strip()
    variant = scoring.choose_variant(raw_user, override=x_variant)

    position = state.user_position(raw_user)
    hook = await recommend_hook(
        scoring.loop, raw_user, state, known=position, k=k, exclude_seen=exclude_seen
    )
    if position is not None:
        who = f"u{position}{hook.key_suffix}"  # fresh interactions change the key
        compute: Callable[[], Recommendation] = partial(
            state.recommend_known,
            variant,
            user=position,
            k=k,
            exclude_seen=exclude_seen,
            **hook.exclude,
        )
    else:
        demographics = query.model_dump(include={"age", "gender", "occupation", "zip"})
        who, compute = _unknown_user(state, variant, demographics, k=k)

    key = _cache_key(state, variant=variant, who=who, k=k, exclude_seen=exclude_seen)
    near = cache.peek(key)  # process memory only: safe on the event loop
    if near is not None:
        fragment, hit = near, True
    else:
        fragment, hit = await _miss(
            state, cache, scoring.admission, variant=variant, key=key, compute=compute
        )
    request_id = await hook.served(
        request_id_var.get() or uuid.uuid4().hex, variant=variant, fragment=fragment, cached=hit
    )
    return _response(request_id, raw_user, variant, state.version, fragment, cached=hit)


async def _miss(
    state: ServingState,
    cache: RecommendationCache,
    admission: AdmissionGate,
    *,
    variant: str,
    key: str,
    compute: Callable[[], Recommendation],
) -> tuple[bytes, bool]:
    """The fragment for a key process memory does not hold, and whether Redis had it.

    Work measured cheap at warm-up (`ServingState.inline`) runs right here on the event
    loop when nothing else would block it: no Redis tier, a free admission slot and no
    more misses waiting on the loop than the gate has slots (`AdmissionGate.on_loop`). The
    thread hop would cost about as much as the work, and a worker's one core gains nothing
    from it. Otherwise Redis and the model block: off the loop, in a worker thread, where
    only the model run takes an admission slot (app/admission.py) and a Redis hit never
    waits for one.
    """
    if variant in state.inline and cache.in_process:
        async with admission.on_loop() as here:
            if here:
                return cache.compute_in_process(key, lambda: _fragment(compute())), False

    async def attempt(seconds: float) -> tuple[bytes, bool]:
        def admitted() -> bytes:
            with admission.slot(wait_seconds=seconds):
                return _fragment(compute())

        return await anyio.to_thread.run_sync(cache.get_or_compute, key, admitted)

    # A full queue is waited out on the loop, holding no thread (AdmissionGate.admit).
    return await admission.admit(attempt)


def _response(
    request_id: str, raw_user: str, variant: str, version: str, fragment: bytes, *, cached: bool
) -> Response:
    """The body around the cached fragment, assembled as bytes (no re-serialisation)."""
    body = b"".join(
        (
            b'{"request_id":',
            orjson.dumps(request_id),
            b',"user_id":',
            orjson.dumps(raw_user),
            b',"variant":',
            orjson.dumps(variant),
            b',"model_version":',
            orjson.dumps(version),
            b",",
            fragment,
            b',"cached":',
            b"true" if cached else b"false",
            b"}",
        )
    )
    return JSONBytesResponse(body)
