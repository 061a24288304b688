"""The one "has this user rated this item" index, used by training, distillation,
evaluation, the bundle's seen.npz and the benchmarks.

Users and items are the 1-based indices of the feature map (0 is the unknown user or
item). Pairs are deduplicated, and each user's items are sorted, so the CSR arrays are
exactly what seen.npz stores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.data import Ratings


@dataclass(frozen=True)
class SeenIndex:
    """CSR of the items each user 0..n_users rated, plus sorted pair keys for membership."""

    n_users: int
    n_items: int
    indptr: np.ndarray  # int64 [n_users + 2]
    indices: np.ndarray  # int64 item indices, sorted within each user
    keys: np.ndarray  # int64 sorted unique user * (n_items + 1) + item

    @classmethod
    def build(
        cls, users: np.ndarray, items: np.ndarray, *, n_users: int, n_items: int
    ) -> SeenIndex:
        stride = n_items + 1
        # Sort then drop repeats: np.unique's default path is far slower on 10^7 keys.
        keys = np.sort(np.asarray(users, np.int64) * stride + np.asarray(items, np.int64))
        if keys.size:
            keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        key_users = keys // stride
        counts = np.bincount(key_users, minlength=n_users + 1)[: n_users + 1]
        indptr = np.zeros(n_users + 2, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(
            n_users=n_users, n_items=n_items, indptr=indptr, indices=keys % stride, keys=keys
        )

    @classmethod
    def from_ratings(cls, ratings: Ratings, *, n_users: int, n_items: int) -> SeenIndex:
        return cls.build(ratings.user, ratings.item, n_users=n_users, n_items=n_items)

    @property
    def stride(self) -> int:
        return self.n_items + 1

    def of(self, user: int) -> np.ndarray:
        """Sorted item indices user `user` rated."""
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def pairs_of(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `users`, item) for every item each of `users` rated: one scatter
        masks a block of rows."""
        starts = self.indptr[users]
        lens = self.indptr[users + 1] - starts
        rows = np.repeat(np.arange(users.size), lens)
        offset = np.repeat(starts - (np.cumsum(lens) - lens), lens)
        return rows, self.indices[offset + np.arange(rows.size)]

    def counts(self) -> np.ndarray:
        """Items rated per user index 0..n_users."""
        return np.diff(self.indptr)[: self.n_users + 1]

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each (user, item) pair was rated; `users` and `items` broadcast."""
        keys = np.asarray(users, np.int64) * self.stride + np.asarray(items, np.int64)
        if self.keys.size == 0:
            return np.zeros(keys.shape, bool)
        pos = np.searchsorted(self.keys, keys).clip(max=self.keys.size - 1)
        return np.asarray(self.keys[pos] == keys)

    def mask_rows(self, scores: np.ndarray, users: np.ndarray, *, value: float) -> None:
        """Sets `scores[r, item] = value` for every item user `users[r]` rated.

        `scores` is [B, n_items + 1] (column 0 is the unknown item) and is changed in place.
        """
        for row, user in enumerate(np.asarray(users, np.int64).tolist()):
            scores[row, self.of(user)] = value
