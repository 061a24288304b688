"""The ensemble teacher: biased MF, xDeepFM and AutoInt in one module (one ONNX graph).

rating = bias + sum_c w_c * clip(r_c); score = sum_c v_c * (s_c - mean_c) / std_c.
The weights and the standardisation statistics are buffers, so they travel with the
state dict and the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from contract.ratings import RATING_MAX, RATING_MIN
from training.features import FeatureTables
from training.models.layers import TowerScoring

COMPONENTS = ("mf", "xdeepfm", "autoint")
DEFAULT_WEIGHTS = (0.4, 0.4, 0.2)


class EnsembleTeacher(TowerScoring):
    rating_weights: Tensor
    rating_bias: Tensor
    score_weights: Tensor
    score_mean: Tensor
    score_std: Tensor

    def __init__(self, mf: TowerScoring, xdeepfm: TowerScoring, autoint: TowerScoring) -> None:
        super().__init__()
        self.mf = mf
        self.xdeepfm = xdeepfm
        self.autoint = autoint
        self.register_buffer("rating_weights", torch.tensor(DEFAULT_WEIGHTS))
        self.register_buffer("rating_bias", torch.tensor(0.0))
        self.register_buffer("score_weights", torch.tensor(DEFAULT_WEIGHTS))
        self.register_buffer("score_mean", torch.zeros(len(COMPONENTS)))
        self.register_buffer("score_std", torch.ones(len(COMPONENTS)))

    @property
    def components(self) -> tuple[TowerScoring, TowerScoring, TowerScoring]:
        return (self.mf, self.xdeepfm, self.autoint)

    def heads(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
    ) -> dict[str, Tensor]:
        outs = [c.heads(user, item, user_feats, item_feats, item_genres) for c in self.components]
        clipped = [o["rating"].clamp(RATING_MIN, RATING_MAX) for o in outs]
        ratings = torch.stack(clipped, dim=1)  # [B, 3]
        scores = torch.stack([o["score"] for o in outs], dim=1)  # [B, 3]
        rating = self.rating_bias + ratings @ self.rating_weights  # [B]
        score = ((scores - self.score_mean) / self.score_std) @ self.score_weights  # [B]
        return {"rating": rating, "score": score, "repr": outs[2]["repr"]}

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        scale = self.score_weights / self.score_std  # [3]
        parts = [c.user_tower(user, user_feats) * scale[k] for k, c in enumerate(self.components)]
        return torch.cat([*parts, torch.ones_like(parts[0][:, :1])], dim=1)  # [B, D+1]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        parts = [c.item_tower(item, item_feats, item_genres) for c in self.components]
        shift = -(self.score_weights * self.score_mean / self.score_std).sum()
        return torch.cat([*parts, shift.expand(item.shape[0], 1)], dim=1)  # [N, D+1]

    def regularizer(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        args = (user, item, user_feats, item_feats, item_genres)
        return torch.stack([c.regularizer(*args) for c in self.components]).sum(0)  # [B]

    @torch.no_grad()
    def component_score_matrices(self, users: np.ndarray, tables: FeatureTables) -> list[Tensor]:
        """Raw scores of each component for every item 1..n_items: 3 x [len(users), n_items]."""
        return [c.score_matrix(users, tables)[:, 1:] for c in self.components]

    @torch.no_grad()
    def standardise(
        self, users: np.ndarray, tables: FeatureTables, *, mats: list[Tensor] | None = None
    ) -> None:
        """Sets each component's score mean and std over (users x whole catalogue).

        `mats` are `component_score_matrices(users, tables)` when the caller has them.
        """
        if mats is None:
            mats = self.component_score_matrices(users, tables)
        self.score_mean.copy_(torch.stack([m.mean() for m in mats]))
        self.score_std.copy_(torch.stack([m.std().clamp(min=1e-6) for m in mats]))

    @torch.no_grad()
    def set_weights(
        self, *, rating: Sequence[float], rating_bias: float, score: Sequence[float]
    ) -> None:
        self.rating_weights.copy_(torch.as_tensor(rating, dtype=torch.float32))
        self.rating_bias.fill_(float(rating_bias))
        self.score_weights.copy_(torch.as_tensor(score, dtype=torch.float32))

    def load_weights_from(
        self, other: EnsembleTeacher, *, tables: FeatureTables, users: np.ndarray
    ) -> None:
        """Takes another teacher's blend weights and re-standardises on this one's scores."""
        self.set_weights(
            rating=other.rating_weights.tolist(),
            rating_bias=float(other.rating_bias),
            score=other.score_weights.tolist(),
        )
        self.standardise(users, tables)
