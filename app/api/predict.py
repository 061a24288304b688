"""POST /predict_rating: one pair or a batch of pairs.

An unknown user is predicted through the model's cold-start path (user index 0 with
unknown demographics); an unknown item is a 404, since nothing about it is known.
"""

from __future__ import annotations

import anyio
import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, HTTPException
from starlette.responses import Response

from app.admission import AdmissionGate
from app.api.batch_limit import BatchLimitedRoute
from app.api.deps import ScoringDep, VariantOverride
from app.config import Settings
from app.responses import JSONBytesResponse
from app.schemas import (
    BatchRatingResponse,
    ErrorBody,
    PredictRequest,
    RatingResponse,
)
from app.state import ServingState


class PairsRoute(BatchLimitedRoute):
    batch_field = "pairs"

    @staticmethod
    def batch_limit(settings: Settings) -> int:
        return settings.max_batch_pairs


router = APIRouter(route_class=PairsRoute)
_NAMED_UNKNOWN = 5
_DECIMALS = 4


def _unknown_items(unknown: list[str]) -> HTTPException:
    shown = ", ".join(repr(i) for i in unknown[:_NAMED_UNKNOWN])
    more = f" and {len(unknown) - _NAMED_UNKNOWN} more" if len(unknown) > _NAMED_UNKNOWN else ""
    noun = "item_id" if len(unknown) == 1 else "item_ids"
    return HTTPException(status_code=404, detail=f"unknown {noun} {shown}{more}")


async def _predict(
    admission: AdmissionGate,
    state: ServingState,
    variant: str,
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """The model run: in a worker thread, holding an admission slot (app/admission.py); a
    full queue is waited out on the event loop, holding no thread."""

    async def attempt(seconds: float) -> npt.NDArray[np.float32]:
        def run() -> npt.NDArray[np.float32]:
            with admission.slot(wait_seconds=seconds):
                return state.predict(variant, users=users, items=items)

        return await anyio.to_thread.run_sync(run)

    return await admission.admit(attempt)


@router.post(
    "/predict_rating",
    response_model=RatingResponse | BatchRatingResponse,
    responses={404: {"model": ErrorBody}, 422: {"model": ErrorBody}},
)
async def predict_rating(
    body: PredictRequest,
    scoring: ScoringDep,
    *,
    x_variant: VariantOverride = None,
) -> Response:
    state, choose_variant, admission = scoring.state, scoring.choose_variant, scoring.admission
    if body.pairs is None:
        assert body.user_id is not None and body.item_id is not None
        user_raw, item_raw = body.user_id, body.item_id
        item = state.item_position(item_raw)
        if item is None:
            raise _unknown_items([item_raw])
        variant = choose_variant(user_raw, override=x_variant)
        rating = await _predict(
            admission,
            state,
            variant,
            np.array([state.user_position(user_raw) or 0], dtype=np.int64),
            np.array([item], dtype=np.int64),
        )
        return JSONBytesResponse(
            {
                "user_id": user_raw,
                "item_id": item_raw,
                "rating": round(float(rating[0]), _DECIMALS),
                "variant": variant,
                "model_version": state.version,
            }
        )

    user_index, item_index = state.bundle.user_index, state.bundle.item_index
    users_raw = [p.user_id for p in body.pairs]
    items_raw = [p.item_id for p in body.pairs]
    items = np.fromiter(
        (item_index.get(i, 0) for i in items_raw), dtype=np.int64, count=len(items_raw)
    )
    if not items.all():
        missing = list(
            dict.fromkeys(i for i, pos in zip(items_raw, items.tolist(), strict=True) if pos == 0)
        )
        raise _unknown_items(missing)
    users = np.fromiter(
        (user_index.get(u, 0) for u in users_raw), dtype=np.int64, count=len(users_raw)
    )
    # One variant per response: the batch follows its first user's assignment.
    variant = choose_variant(users_raw[0], override=x_variant)
    ratings = await _predict(admission, state, variant, users, items)
    return JSONBytesResponse(
        {
            "ratings": np.round(ratings.astype(np.float64), _DECIMALS).tolist(),
            "variant": variant,
            "model_version": state.version,
        }
    )
