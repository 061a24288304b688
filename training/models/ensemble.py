"""The ensemble teacher: biased MF, xDeepFM and AutoInt in one module (one ONNX graph).

rating = bias + sum_c w_c * clip(r_c);
score = sum_c v_c * (s_c - mean_c) / std_c + g * (r_mf - mean_r) / std_r.
The last term ranks with MF's rating head as well (g = `rating_score_weight`): MF's rating
is an inner product of user and item factors, so the teacher stays a two-tower model.
The weights and the standardisation statistics are buffers, so they travel with the
state dict and the exported graph.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from training.features import FeatureTables
from training.models.base import RatedScore
from training.models.layers import TowerScoring
from training.models.mf import BiasedMF

COMPONENTS = ("mf", "xdeepfm", "autoint")
DEFAULT_WEIGHTS = (0.4, 0.4, 0.2)


class EnsembleTeacher(TowerScoring, RatedScore):
    rating_weights: Tensor
    rating_bias: Tensor
    score_weights: Tensor
    score_mean: Tensor
    score_std: Tensor

    def __init__(self, mf: TowerScoring, xdeepfm: TowerScoring, autoint: TowerScoring) -> None:
        super().__init__()
        self.rating_bounds = mf.rating_bounds
        if not isinstance(mf, BiasedMF):
            raise TypeError(f"the teacher's MF component must be a BiasedMF, not {type(mf)}")
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
        low, high = self.rating_bounds
        clipped = [o["rating"].clamp(low, high) for o in outs]
        ratings = torch.stack(clipped, dim=1)  # [B, 3]
        scores = torch.stack([o["score"] for o in outs], dim=1)  # [B, 3]
        rating = self.rating_bias + ratings @ self.rating_weights  # [B]
        score = ((scores - self.score_mean) / self.score_std) @ self.score_weights  # [B]
        score = score + self.rating_term(outs[0]["rating"])  # [B]
        return {"rating": rating, "score": score, "repr": outs[2]["repr"]}

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        scale = self.score_weights / self.score_std  # [3]
        parts = [c.user_tower(user, user_feats) * scale[k] for k, c in enumerate(self.components)]
        rated = self.mf.user_rating_factors(user, user_feats) * self.rating_scale()  # [B, R]
        return torch.cat([*parts, rated, torch.ones_like(rated[:, :1])], dim=1)  # [B, D+R+1]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        parts = [c.item_tower(item, item_feats, item_genres) for c in self.components]
        rated = self.mf.item_rating_factors(item, item_feats, item_genres)  # [N, R]
        shift = -(self.score_weights * self.score_mean / self.score_std).sum()
        shift = shift + self.rating_term(self.mf.mu)
        return torch.cat([*parts, rated, shift.expand(item.shape[0], 1)], dim=1)  # [N, D+R+1]

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
        self,
        users: np.ndarray,
        tables: FeatureTables,
        *,
        mats: list[Tensor] | None = None,
        rated: Tensor | None = None,
    ) -> None:
        """Sets each component's score mean and std, and those of MF's rating, over
        (users x whole catalogue).

        `mats` are `component_score_matrices(users, tables)` and `rated` is
        `mf.rating_matrix(users, tables)` when the caller has them.
        """
        if mats is None:
            mats = self.component_score_matrices(users, tables)
        self.score_mean.copy_(torch.stack([m.mean() for m in mats]))
        self.score_std.copy_(torch.stack([m.std().clamp(min=1e-6) for m in mats]))
        self.standardise_rating(self.mf.rating_matrix(users, tables) if rated is None else rated)

    @torch.no_grad()
    def set_weights(
        self,
        *,
        rating: Sequence[float],
        rating_bias: float,
        score: Sequence[float],
        rating_score: float | None = None,
    ) -> None:
        """The blend's weights; `rating_score` (g) stays as it is when None."""
        self.rating_weights.copy_(torch.as_tensor(rating, dtype=torch.float32))
        self.rating_bias.fill_(float(rating_bias))
        self.score_weights.copy_(torch.as_tensor(score, dtype=torch.float32))
        if rating_score is not None:
            self.rating_score_weight.fill_(float(rating_score))

    def load_weights_from(
        self, other: EnsembleTeacher, *, tables: FeatureTables, users: np.ndarray
    ) -> None:
        """Takes another teacher's blend weights and re-standardises on this one's scores."""
        self.set_weights(
            rating=other.rating_weights.tolist(),
            rating_bias=float(other.rating_bias),
            score=other.score_weights.tolist(),
            rating_score=float(other.rating_score_weight),
        )
        self.standardise(users, tables)
