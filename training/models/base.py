"""What every rating/ranking model in training/ looks like from the outside."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from contract.ratings import DEFAULT_RATING_SCALE, RatingScale
from training.features import Batch, FeatureTables

# (user, item, user_feats, item_feats, item_genres), the ONNX input order.
Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class TwoHeadModel(nn.Module):
    """A model with a rating head and a ranking-score head over the shared inputs.

    Subclasses implement `heads`; `forward` is what ONNX export traces.
    """

    # (low, high) ratings are clipped to; a model built on a feature map takes the map's
    # (`FeatureMap.rating_scale`), fixed in the exported graph as constants.
    rating_bounds: RatingScale = DEFAULT_RATING_SCALE

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        """Returns at least 'rating' [B] (unclipped) and 'score' [B]; may add 'repr' [B, D]."""
        raise NotImplementedError

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        """[B] user, [B, Fu] feats -> [B, D]; `score` is user_tower · item_tower."""
        raise NotImplementedError

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        """[N] item, [N, Fi] feats, [N, G] genres -> [N, D]."""
        raise NotImplementedError

    def forward(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
    ) -> tuple[Tensor, Tensor]:
        out = self.heads(user, item, user_feats, item_feats, item_genres)
        low, high = self.rating_bounds
        return out["rating"].clamp(low, high), out["score"]  # [B], [B]


class FactoredRating(nn.Module):
    """A model whose unclipped rating is `rating_offset() + user_rating_factors(u) ·
    item_rating_factors(i)`: its rating matrix is one product, and the bundle can carry
    its rating in that form (training/rating_factors.py)."""

    def user_rating_factors(self, user: Tensor, user_feats: Tensor) -> Tensor:
        """[B] user, [B, Fu] feats -> [B, R]."""
        raise NotImplementedError

    def item_rating_factors(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        """[N] item, [N, Fi] feats, [N, G] genres -> [N, R]."""
        raise NotImplementedError

    def rating_offset(self) -> float:
        raise NotImplementedError

    @torch.no_grad()
    def rating_matrix(
        self, users: np.ndarray, tables: FeatureTables, *, right: Tensor | None = None
    ) -> Tensor:
        """Unclipped ratings of every item 1..n_items for each user: [len(users), n_items].
        `right` is `catalogue_rating_factors(tables)` where the caller keeps it."""
        dev = next(self.parameters()).device
        user = torch.as_tensor(users, dtype=torch.long, device=dev)
        left = self.user_rating_factors(
            user, torch.as_tensor(tables.user_feats[users], device=dev)
        )  # [b, R]
        if right is None:
            right = self.catalogue_rating_factors(tables)  # [n_items, R]
        return left @ right.T + self.rating_offset()  # [b, n_items]

    @torch.no_grad()
    def catalogue_rating_factors(self, tables: FeatureTables) -> Tensor:
        """The item side of every item 1..n_items: [n_items, R]."""
        dev = next(self.parameters()).device
        return self.item_rating_factors(
            torch.arange(1, tables.item_feats.shape[0], device=dev),
            torch.as_tensor(tables.item_feats[1:], device=dev),
            torch.as_tensor(tables.item_genres[1:], device=dev),
        )


class RatedScore(nn.Module):
    """A model whose ranking score adds g x a rating standardised over (users x catalogue):
    score += g (rating - mean_r) / std_r, as the teacher ranks with MF's rating and the
    student with its own. g, mean_r and std_r are buffers, so they travel with the state
    dict and the exported graphs; g = 0 ranks without the rating."""

    rating_score_weight: Tensor
    rating_score_mean: Tensor
    rating_score_std: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rating_score_weight", torch.tensor(0.0))
        self.register_buffer("rating_score_mean", torch.tensor(0.0))
        self.register_buffer("rating_score_std", torch.tensor(1.0))

    def rating_scale(self) -> Tensor:
        """a = g / std_r, the raw rating's weight in the score (and in the retrieval vectors)."""
        return self.rating_score_weight / self.rating_score_std

    def rating_term(self, rating: Tensor) -> Tensor:
        return self.rating_scale() * (rating - self.rating_score_mean)  # rating's shape

    @torch.no_grad()
    def standardise_rating(self, rated: Tensor) -> None:
        """mean_r and std_r over a rating matrix [U, M] (in float64: it can be large)."""
        rated = rated.double()
        self.rating_score_mean.fill_(float(rated.mean()))
        self.rating_score_std.fill_(max(float(rated.std()), 1e-6))


def to_inputs(batch: Batch, device: torch.device | str = "cpu") -> Inputs:
    return (
        torch.as_tensor(batch.user, dtype=torch.long, device=device),
        torch.as_tensor(batch.item, dtype=torch.long, device=device),
        torch.as_tensor(batch.user_feats, dtype=torch.long, device=device),
        torch.as_tensor(batch.item_feats, dtype=torch.long, device=device),
        torch.as_tensor(batch.item_genres, dtype=torch.float32, device=device),
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
