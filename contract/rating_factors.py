"""A separable rating head in factored form: two float32 matrices and an offset.

A model whose rating is `mu + b_u + b_i + p_u · q_i` (the student: a biased MF over its
towers' outputs) needs no graph run to rate a known user: with `users[u] = [p_u, b_u, 1]`
and `items[i - 1] = [q_i, 1, b_i]`, the rating is `offset + users[u] · items[i - 1]`,
clipped to the rating scale. Export writes the matrices for the known users (rows
0..n_users, each computed from the bundle's own feature row of that user) and for the
catalogue, and checks them against the model's rating graph; the service then rates the k
items of a /recommend, and /predict_rating's known pairs, with k dot products instead of a
session run. A user the bundle does not know (cold start, with features from the request)
still goes through the graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from contract.manifest import RatingFactorsRef
from contract.towers import load_matrix


def rating_factor_files(key: str) -> dict[str, str]:
    """File names of model `key`'s user and item rating factors."""
    return {"users": f"{key}.rating_users.npy", "items": f"{key}.rating_items.npy"}


@dataclass(frozen=True)
class RatingFactors:
    users: npt.NDArray[np.float32]  # [n_users + 1, R], row u: user index u
    items: npt.NDArray[np.float32]  # [n_items, R], row j: item index j + 1
    offset: float

    def rate(
        self,
        user: npt.NDArray[np.int64],  # [B], known users (1..n_users)
        item: npt.NDArray[np.int64],  # [B], item indices (1..n_items)
    ) -> npt.NDArray[np.float32]:
        """Unclipped ratings [B] of the pairs."""
        left = self.users.take(user, axis=0)  # [B, R]
        right = self.items.take(item - 1, axis=0)  # [B, R]
        return np.einsum("br,br->b", left, right) + np.float32(self.offset)


def load_rating_factors(
    directory: Path, ref: RatingFactorsRef, *, n_users: int, n_items: int
) -> RatingFactors:
    """Both matrices, checked against the manifest entry and the bundle's sizes."""
    return RatingFactors(
        users=load_matrix(directory / ref.users.file, ref.users, rows=n_users + 1),
        items=load_matrix(directory / ref.items.file, ref.items, rows=n_items),
        offset=float(ref.offset),
    )
