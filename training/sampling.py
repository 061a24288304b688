"""Per-user item lists, the examples of distillation and of the Fisher estimates.

A list is one user with `positives` items drawn from the user's training ratings and
`negatives` items drawn from the whole catalogue, redrawn when the user has rated them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from training.features import FeatureMap, FeatureTables
from training.seen import SeenIndex

if TYPE_CHECKING:
    from training.data import Ratings


class ListSampler:
    """Draws per-user item lists; arrays are [N, L] with L = positives + negatives."""

    def __init__(
        self,
        fm: FeatureMap,
        tables: FeatureTables,
        train: Ratings,
        *,
        positives: int,
        negatives: int,
        seed: int,
    ) -> None:
        if len(train) == 0:
            raise ValueError("no training ratings to distil on")
        self.fm = fm
        self.tables = tables
        self.positives = positives
        self.negatives = negatives
        self.rng = np.random.default_rng(seed)
        # Positives are drawn from every rating row (a repeated pair counts twice, with its
        # own rating), so this CSR keeps duplicates; `seen` answers membership.
        order = np.lexsort((train.item, train.user))
        self.items = train.item[order].astype(np.int64)
        self.ratings = train.rating[order].astype(np.float32)
        counts = np.bincount(train.user[order], minlength=fm.n_users + 1)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.users = np.flatnonzero(counts > 0).astype(np.int64)
        self.seen = SeenIndex.from_ratings(train, n_users=fm.n_users, n_items=fm.n_items)

    def _lists(self, users: np.ndarray) -> dict[str, np.ndarray]:
        n, p, q = users.size, self.positives, self.negatives
        item = np.empty((n, p + q), np.int64)
        rating = np.zeros((n, p + q), np.float32)
        rated = np.zeros((n, p + q), bool)
        for row, u in enumerate(users):
            lo, hi = self.indptr[u], self.indptr[u + 1]
            pick = lo + self.rng.choice(hi - lo, size=p, replace=hi - lo < p)
            item[row, :p] = self.items[pick]
            rating[row, :p] = self.ratings[pick]
            rated[row, :p] = True
        item[:, p:] = self.rng.integers(1, self.fm.n_items + 1, size=(n, q))
        # A drawn item the user has rated is not a negative: redraw a few times; any that
        # remain (users who rated most of the catalogue) count as unrated list members.
        neg = item[:, p:]
        for _ in range(8):
            clash = self.seen.contains(users[:, None], neg)
            if not clash.any():
                break
            neg[clash] = self.rng.integers(1, self.fm.n_items + 1, size=int(clash.sum()))
        item[:, p:] = neg
        return {
            "user": np.repeat(users[:, None], p + q, axis=1),
            "item": item,
            "rating": rating,
            "rated": rated,
        }

    def epoch_lists(self) -> dict[str, np.ndarray]:
        """Each user once per `positives` of their training ratings (rounded up), shuffled."""
        counts = np.diff(self.indptr)[self.users]
        users = np.repeat(self.users, np.ceil(counts / self.positives).astype(np.int64))
        return self._lists(self.rng.permutation(users))

    def fixed_examples(self, n: int) -> dict[str, Tensor]:
        users = self.rng.choice(self.users, size=n, replace=self.users.size < n)
        return self.tensors(self._lists(users))

    def tensors(self, lists: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
        return list_tensors(self.tables, lists)


def list_tensors(tables: FeatureTables, lists: Mapping[str, np.ndarray]) -> dict[str, Tensor]:
    """[N, L] user, item, rating and rated arrays -> the examples, features gathered."""
    user, item = lists["user"], lists["item"]
    return {
        "user": torch.as_tensor(user),
        "item": torch.as_tensor(item),
        "user_feats": torch.as_tensor(tables.user_feats[user]),
        "item_feats": torch.as_tensor(tables.item_feats[item]),
        "item_genres": torch.as_tensor(tables.item_genres[item]),
        "rating": torch.as_tensor(lists["rating"]),
        "rated": torch.as_tensor(lists["rated"]),
    }
