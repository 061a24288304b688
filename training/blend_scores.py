"""The matrices the ensemble weight search blends: each component's score and MF's rating
for every catalogue item, standardised, for the validation users it ranks.

They were built whole (4 x users x items in float64), which bounded the search to 2^24
scores per matrix: 64 users on a million-item catalogue, where the choice of weights
varies with the sample of users (bench.blend_users). `BlendTopK` keeps only each user's
candidates, so the matrices come a block of users at a time from the component towers
(computed once), and the search ranks up to `train.fit_ensemble_weights`'s 3,000 users
at any size below 2^31 scores (docs/SCALE.md item 35). When every user fits in one
block the matrices are built whole as before, so ml-100k's and ML-1M's weights do not
change.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from training.evaluate import bounded_users
from training.features import FeatureTables
from training.models.ensemble import EnsembleTeacher

# Scores per matrix in one block; the teacher is standardised on the first block's users.
BLOCK_CELLS = 1 << 24
# Users x items the search ranks in all: the matrices cost a product and a top-k per block.
SEARCH_CELLS = 1 << 31


def block_users(n_items: int) -> int:
    """Users in one block (and in the standardisation sample) on a catalogue of `n_items`."""
    return bounded_users(n_items, cells=BLOCK_CELLS, floor=64)


def search_users(n_items: int) -> int:
    """Most users the weight search ranks on a catalogue of `n_items`."""
    return bounded_users(n_items, cells=SEARCH_CELLS, floor=64)


class TeacherScores:
    """`BlendTopK`'s `ScoreBlocks` of `teacher` for `users` (rows in that order): three
    components' scores and MF's rating, each standardised as (x - mean) / std over the
    first block's users, [4, b, n_items] per block (float64 when one block holds every
    user, as the matrices were built before blocks; float32 otherwise).

    Building it standardises `teacher` on the first block (`EnsembleTeacher.standardise`);
    put a random sample first when there are several blocks.
    """

    @torch.no_grad()
    def __init__(self, teacher: EnsembleTeacher, tables: FeatureTables, users: np.ndarray) -> None:
        self.teacher, self.tables, self.users = teacher, tables, users
        self.n_rows = users.size
        self.block_rows = min(block_users(tables.item_feats.shape[0] - 1), self.n_rows)
        self.whole = self.block_rows == self.n_rows
        if not self.whole:
            # The item side of every matrix, once: a block then costs four products.
            self.items = [c.catalogue_vectors(tables)[1:] for c in teacher.components]
            self.right = teacher.mf.catalogue_rating_factors(tables)
        first = self._raw(users[: self.block_rows])
        teacher.standardise(users[: self.block_rows], tables, mats=first[:3], rated=first[3])
        self.mean = [m.mean() for m in first]
        self.std = [m.std().clamp(min=1e-6) for m in first]
        self.kept = self._standardised(first) if self.whole else None  # [4, users, n_items]

    def block(self, start: int) -> np.ndarray:
        if self.kept is not None:
            return self.kept[:, start : start + self.block_rows]
        # float32, standardised in place: BlendTopK casts only the candidates it keeps to
        # float64, so a whole block in float64 would be written and read for nothing.
        with torch.no_grad():
            raw = self._raw(self.users[start : start + self.block_rows])
            z = torch.empty((len(raw), *raw[0].shape), dtype=raw[0].dtype, device=raw[0].device)
            for c, (m, mu, sd) in enumerate(zip(raw, self.mean, self.std, strict=True)):
                torch.sub(m, mu, out=z[c]).div_(sd)
        return z.cpu().numpy()  # [4, b, n_items]

    def _raw(self, users: np.ndarray) -> list[Tensor]:
        """Scores of the three components and MF's rating: 4 x [b, n_items]."""
        teacher, tables = self.teacher, self.tables
        if self.whole:
            return [
                *teacher.component_score_matrices(users, tables),
                teacher.mf.rating_matrix(users, tables),
            ]
        towers = zip(teacher.components, self.items, strict=True)
        return [
            *(c.user_vectors(users, tables) @ v.T for c, v in towers),  # [b, n_items] each
            teacher.mf.rating_matrix(users, tables, right=self.right),
        ]

    def _standardised(self, raw: list[Tensor]) -> np.ndarray:
        # float64 once: a float32 z was cast again for every weight vector.
        z = [
            ((m - mu) / sd).cpu().numpy()
            for m, mu, sd in zip(raw, self.mean, self.std, strict=True)
        ]
        return np.stack(z).astype(np.float64)
