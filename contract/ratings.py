"""The rating scale: what a rating head is clipped to.

The models clip inside the graph with RATING_MIN/RATING_MAX; a bundle's manifest records the
scale its models were trained on (`dataset.rating_scale`, absent in older bundles, which
means DEFAULT_RATING_SCALE), and the service clips again with that scale as a guard.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

RATING_MIN = 1.0
RATING_MAX = 5.0
RatingScale = tuple[float, float]
DEFAULT_RATING_SCALE: RatingScale = (RATING_MIN, RATING_MAX)


def check_rating_scale(scale: RatingScale) -> RatingScale:
    """`scale` as (low, high) floats; raises ValueError unless both are finite and low < high."""
    low, high = float(scale[0]), float(scale[1])
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"rating scale must be finite with low < high, got {scale!r}")
    return (low, high)


def clip_ratings(
    ratings: npt.ArrayLike, scale: RatingScale = DEFAULT_RATING_SCALE
) -> npt.NDArray[np.float32]:
    """Ratings as a flat float32 array clipped to `scale`."""
    flat = np.asarray(ratings, dtype=np.float32).reshape(-1)
    return flat.clip(scale[0], scale[1])  # the method: half np.clip's call overhead
