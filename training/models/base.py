"""What every rating/ranking model in training/ looks like from the outside."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from contract.ratings import RATING_MAX, RATING_MIN
from training.features import Batch

# (user, item, user_feats, item_feats, item_genres), the ONNX input order.
Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class TwoHeadModel(nn.Module):
    """A model with a rating head and a ranking-score head over the shared inputs.

    Subclasses implement `heads`; `forward` is what ONNX export traces.
    """

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
        return out["rating"].clamp(RATING_MIN, RATING_MAX), out["score"]  # [B], [B]


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
