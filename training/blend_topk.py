"""Each user's top-k items under a weighted blend of score matrices, found among a few
candidates per user instead of the whole catalogue.

The ensemble weight search (train.fit_ensemble_weights) ranks the same validation users
once per grid point, and ranking a blend over the catalogue read every score of every
matrix each time: on the 10^6-item catalogue its 231 grid points took 194 s, almost all
of it in the weighted sums and partitions (docs/SCALE.md item 33).

For weights w >= 0 an item outside the union of every matrix's M best unrated items scores
at most sum_c w_c t_c, where t_c is matrix c's M-th best unrated score. So when the k-th
best blend among those candidates is above that bound, the candidates hold the exact top
k; the few rows where it is not are ranked over the whole catalogue as before. Blends are
computed in the same order of operations either way, so the lists, and every metric,
are those of ranking the whole catalogue (tests/training/test_blend_topk.py).

Only the candidates' scores are kept, so the matrices can come a block of rows at a time
(`ScoreBlocks`): the search ranks as many users on a million-item catalogue as on a small
one (docs/SCALE.md item 35).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from training.evaluate import top_k_stable, top_unrated
from training.seen import SeenIndex

# Candidates per matrix and user: more make a grid point dearer and fewer rows fall back
# to the whole catalogue. With 256, none of the 231-point grid's rankings did in the
# catalogue builds of 10^4, 10^5 and 10^6 items (bench/results/catalogue-20261205c/).
CANDIDATES_PER_MATRIX = 256


def blend(weights: np.ndarray, mats: np.ndarray) -> np.ndarray:
    """sum_c weights[c] * mats[c], term by term in c's order: [..., n] from [C, ..., n].

    Scaled adds: a float64 tensordot over the same block was 3-20x slower. The full and
    the candidate rankings both blend through here, so their values agree bit for bit.
    """
    out = weights[0] * mats[0]
    for c in range(1, weights.size):
        out = out + weights[c] * mats[c]
    return np.asarray(out)


class ScoreBlocks(Protocol):
    """Score matrices of a fixed list of users, a block of `block_rows` rows at a time."""

    n_rows: int
    block_rows: int

    def block(self, start: int) -> np.ndarray:
        """Rows start .. start + block_rows (fewer at the end): [C, b, n_items], float32
        or float64 (blends are taken in float64), the same values on every call."""
        ...


@dataclass
class InMemory:
    """Matrices already in memory ([C, U, n_items]): one block of every row."""

    mats: np.ndarray

    def __post_init__(self) -> None:
        self.n_rows = self.block_rows = self.mats.shape[1]

    def block(self, start: int) -> np.ndarray:
        return self.mats[:, start : start + self.block_rows]


@dataclass
class _Block:
    """One block's candidates (0-based columns) and the bounds on every other item."""

    cols: list[np.ndarray]  # per row, sorted unique unrated items
    bound: np.ndarray  # [C, b]: t_c per row (0 where the row is complete)
    complete: np.ndarray  # [b]: every unrated item is a candidate


class BlendTopK:
    """Top-k lists of blends of the matrices of `scores` (column j is item j + 1) for the
    users of its rows, excluding what each rated in `seen`.

    Blends take the first len(w) matrices, with non-negative weights w.
    """

    def __init__(
        self,
        scores: ScoreBlocks | np.ndarray,
        users: np.ndarray,
        seen: SeenIndex,
        *,
        k: int = 10,
        per_matrix: int | None = None,
    ) -> None:
        self.scores = InMemory(scores) if isinstance(scores, np.ndarray) else scores
        self.users, self.seen = users, seen
        self.k = min(k, seen.n_items)
        m = min(per_matrix or CANDIDATES_PER_MATRIX, seen.n_items)
        rated = seen.counts()  # items each user index rated
        blocks: list[_Block] = []
        values: list[np.ndarray] = []  # per row, [C, its candidates]
        for start in range(0, self.scores.n_rows, self.scores.block_rows):
            z = self.scores.block(start)  # [C, b, n_items]
            mine = users[start : start + z.shape[1]]
            # Rows with at most m unrated items have them all as candidates: always exact.
            complete = seen.n_items - rated[mine] <= m
            blocks.append(self._candidates(z, mine, m, complete=complete))
            values += [z[:, row, items] for row, items in enumerate(blocks[-1].cols)]
        self.bound = np.concatenate([b.bound for b in blocks], axis=1)  # [C, U]
        self.complete = np.concatenate([b.complete for b in blocks])  # [U]
        cols = [c for b in blocks for c in b.cols]
        width = max([self.k, *(c.size for c in cols)])
        # Padded with column 0 and marked invalid, so every row has `width` candidates.
        self.cols = np.zeros((len(cols), width), np.int64)
        self.valid = np.zeros((len(cols), width), bool)
        self.cand = np.zeros((self.bound.shape[0], len(cols), width))  # [C, U, width]
        for row, (items, vals) in enumerate(zip(cols, values, strict=True)):
            self.cols[row, : items.size] = items
            self.valid[row, : items.size] = True
            self.cand[:, row, : items.size] = vals
        # Per call, rows ranked over the whole catalogue (for the log; appends are atomic
        # where the weight search ranks grid points on threads).
        self.full_rows: list[int] = []
        self.rows: list[int] = []

    def _candidates(
        self, z: np.ndarray, users: np.ndarray, m: int, *, complete: np.ndarray
    ) -> _Block:
        """Each row's union of every matrix's m best unrated items.

        torch.topk, not np.argpartition: 20x faster on a million-item row. Which of tied
        items it keeps does not matter: a tie with the m-th score is at the bound, and a
        k-th blend at the bound sends the row to the whole catalogue.
        """
        n_mats, n_rows, _ = z.shape
        rows, items = self.seen.pairs_of(users)
        bound = np.zeros((n_mats, n_rows))
        best, finite = [], []
        for c in range(n_mats):
            scores = z[c].copy()  # [b, n_items]
            scores[rows, items - 1] = -np.inf
            vals, top = torch.topk(torch.from_numpy(scores), m, dim=1, sorted=False)
            bound[c] = np.where(complete, 0.0, vals.min(dim=1).values.numpy())
            best.append(top.numpy())
            finite.append(torch.isfinite(vals).numpy())
        best_all, finite_all = np.concatenate(best, axis=1), np.concatenate(finite, axis=1)
        cols = [np.unique(best_all[r][finite_all[r]]) for r in range(n_rows)]
        return _Block(cols=cols, bound=bound, complete=complete)

    def top(self, weights: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(items [b, k], finite [b, k]) of the blend with `weights` for `rows`: each
        row's k best unrated items (1-based), ties to the lower index; `finite` is False
        where fewer than k items were left unrated."""
        w = np.asarray(weights, np.float64)
        if (w < 0).any():
            raise ValueError("candidate ranking needs non-negative blend weights")
        scores = np.where(self.valid[rows], blend(w, self.cand[: w.size, rows]), -np.inf)
        pick = top_k_stable(scores, self.k)
        vals = np.take_along_axis(scores, pick, axis=1)
        items = np.take_along_axis(self.cols[rows], pick, axis=1) + 1
        finite = np.isfinite(vals)
        # Above the bound, nothing outside the candidates can reach or tie the k-th item.
        bound = blend(w, self.bound[: w.size, rows])
        full = np.flatnonzero(~self.complete[rows] & (vals[:, -1] <= bound))
        self.full_rows.append(full.size)
        self.rows.append(rows.size)
        if full.size:
            items[full], finite[full] = self._whole(w, rows[full])
        return items, finite

    def _whole(self, w: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`top` over the whole catalogue, as the search ranked before candidates: each
        row's block again, as the candidates were taken from it."""
        items = np.zeros((rows.size, self.k), np.int64)
        finite = np.zeros((rows.size, self.k), bool)
        size = self.scores.block_rows
        starts = rows - rows % size
        for start in np.unique(starts).tolist():
            here = np.flatnonzero(starts == start)
            z = self.scores.block(start)  # [C, b, n_items]
            z = np.asarray(z[: w.size, rows[here] - start], np.float64)
            scores = blend(w, z)  # [len(here), n_items]
            items[here], finite[here] = top_unrated(
                scores, self.users[rows[here]], self.seen, self.k
            )
        return items, finite
