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
"""

from __future__ import annotations

import numpy as np

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


class BlendTopK:
    """Top-k lists of blends of `mats` ([C, U, n_items]; column j is item j + 1) for the
    users of its rows, excluding what each rated in `seen`.

    Blends take the first len(w) matrices, with non-negative weights w.
    """

    def __init__(
        self,
        mats: np.ndarray,
        users: np.ndarray,
        seen: SeenIndex,
        *,
        k: int = 10,
        per_matrix: int | None = None,
    ) -> None:
        n_mats, n_rows, n_items = mats.shape
        self.mats, self.users, self.seen, self.k = mats, users, seen, min(k, n_items)
        m = min(per_matrix or CANDIDATES_PER_MATRIX, n_items)
        cands: list[np.ndarray] = []
        self.bound = np.zeros((n_mats, n_rows))  # t_c per row
        # Rows with at most m unrated items have them all as candidates: always exact.
        self.complete = np.zeros(n_rows, bool)
        for row, user in enumerate(users.tolist()):
            rated = seen.of(user) - 1
            self.complete[row] = n_items - rated.size <= m
            best = []
            for c in range(n_mats):
                scores = mats[c, row].copy()
                scores[rated] = -np.inf
                top = np.argpartition(-scores, m - 1)[:m]
                best.append(top)
                if not self.complete[row]:
                    self.bound[c, row] = scores[top].min()
            cands.append(np.setdiff1d(np.concatenate(best), rated))  # sorted, unique
        width = max([self.k, *(items.size for items in cands)])
        # Padded with column 0 and marked invalid, so every row has `width` candidates.
        self.cols = np.zeros((n_rows, width), np.int64)
        self.valid = np.zeros((n_rows, width), bool)
        for row, items in enumerate(cands):
            self.cols[row, : items.size] = items
            self.valid[row, : items.size] = True
        self.cand = np.take_along_axis(mats, self.cols[None], axis=2)  # [C, U, width]
        # Per call, rows ranked over the whole catalogue (for the log; appends are atomic
        # where the weight search ranks grid points on threads).
        self.full_rows: list[int] = []
        self.rows: list[int] = []

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
        """`top` over the whole catalogue, as the search ranked before candidates."""
        scores = blend(w, self.mats[: w.size, rows])  # [b, n_items]
        return top_unrated(scores, self.users[rows], self.seen, self.k)
