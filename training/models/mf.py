"""Biased matrix factorisation ("SVD"), plus the building blocks every teacher component shares.

All three teacher components score rankings with a two-tower head: score(u, i) =
<U(u), V(i)>. Ranking is evaluated over the whole catalogue, so the ranking loss needs the
score of many items per user; towers make that one matrix product for training (sampled
softmax) and for scoring a catalogue.
"""

from __future__ import annotations

from itertools import pairwise
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from training.device import model_device
from training.features import FeatureMap, FeatureTables
from training.models.base import TwoHeadModel

if TYPE_CHECKING:
    from collections.abc import Sequence


class FieldEmbedding(nn.Module):
    """Embeds every field of a (user, item) pair: [user, user fields, item, item fields, genres].

    The single-valued fields share one table with per-field offsets (one gather in ONNX);
    the genre bag is the mean of its genre embeddings.
    """

    user_offsets: Tensor
    item_offsets: Tensor

    def __init__(self, fm: FeatureMap, dim: int, *, init_std: float = 0.01) -> None:
        super().__init__()
        user_sizes = [fm.user_vocab, *fm.user_field_vocabs]
        item_sizes = [fm.item_vocab, *fm.item_field_vocabs]
        self.n_user_fields = len(user_sizes)
        self.n_item_fields = len(item_sizes) + 1  # + genre bag
        self.dim = dim
        user_off = np.concatenate([[0], np.cumsum(user_sizes)[:-1]])
        item_off = np.concatenate([[0], np.cumsum(item_sizes)[:-1]]) + sum(user_sizes)
        self.register_buffer("user_offsets", torch.as_tensor(user_off, dtype=torch.long))
        self.register_buffer("item_offsets", torch.as_tensor(item_off, dtype=torch.long))
        self.table = nn.Embedding(sum(user_sizes) + sum(item_sizes), dim)
        self.genre = nn.Parameter(torch.randn(fm.n_genres, dim) * init_std)
        nn.init.normal_(self.table.weight, std=init_std)

    @property
    def n_fields(self) -> int:
        return self.n_user_fields + self.n_item_fields

    def user_side(self, user: Tensor, user_feats: Tensor) -> Tensor:
        idx = torch.cat([user.unsqueeze(1), user_feats], dim=1)  # [B, 1+Fu]
        return self.table(idx + self.user_offsets)  # [B, 1+Fu, d]

    def item_side(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        idx = torch.cat([item.unsqueeze(1), item_feats], dim=1)  # [N, 1+Fi]
        single = self.table(idx + self.item_offsets)  # [N, 1+Fi, d]
        count = item_genres.sum(dim=1, keepdim=True).clamp(min=1.0)  # [N, 1]
        bag = (item_genres @ self.genre) / count  # [N, d]
        return torch.cat([single, bag.unsqueeze(1)], dim=1)  # [N, 2+Fi, d]

    def forward(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        u = self.user_side(user, user_feats)  # [B, 1+Fu, d]
        i = self.item_side(item, item_feats, item_genres)  # [B, 2+Fi, d]
        return torch.cat([u, i], dim=1)  # [B, F, d]

    def squared_norm(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        """Per-example squared norm of the rows this batch uses (L2 on used rows only)."""
        e = self(user, item, user_feats, item_feats, item_genres)  # [B, F, d]
        return e.pow(2).sum(dim=(1, 2))  # [B]


def mlp(
    sizes: Sequence[int], *, dropout: float = 0.0, last_activation: bool = False
) -> nn.Sequential:
    """Linear layers with ReLU between them (and after the last one if asked)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class TowerScoring(TwoHeadModel):
    """A TwoHeadModel whose ranking score is the dot product of a user and an item tower.

    `tower_prefixes` names the parameters only the ranking towers use; every other
    parameter belongs to the rating head. Keeping the two disjoint lets training stop each
    head at its own best epoch.
    """

    tower_prefixes: tuple[str, ...] = ()

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        """[B] user, [B, Fu] feats -> [B, D]."""
        raise NotImplementedError

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        """[N] item, [N, Fi] feats, [N, G] genres -> [N, D]."""
        raise NotImplementedError

    def tower_score(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        u = self.user_tower(user, user_feats)  # [B, D]
        v = self.item_tower(item, item_feats, item_genres)  # [B, D]
        return (u * v).sum(dim=1)  # [B]

    def score_matrix(self, users: np.ndarray, tables: FeatureTables) -> Tensor:
        """Scores of every item index 0..n_items for each user: [len(users), n_items + 1]."""
        dev = model_device(self)
        user = torch.as_tensor(users, dtype=torch.long, device=dev)
        u = self.user_tower(user, torch.as_tensor(tables.user_feats[users], device=dev))  # [b, D]
        v = self.item_tower(
            torch.arange(tables.item_feats.shape[0], device=dev),
            torch.as_tensor(tables.item_feats, device=dev),
            torch.as_tensor(tables.item_genres, device=dev),
        )  # [n_items+1, D]
        return u @ v.T  # [b, n_items+1]

    def regularizer(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        """Per-example L2 penalty of the parameters the rating head used: [B]."""
        raise NotImplementedError


class BiasedMF(TowerScoring):
    """r(u, i) = mu + b_u + b_i + <p_u, q_i>; score(u, i) = <x_u, y_i> + c_i.

    Feature-based biased MF (as in SVDFeature, Chen et al., 2012): a user's factor p_u and
    bias b_u are the sums of the rows of the user id and of each user field (age, gender,
    occupation, zip prefix); items likewise, with the genre bag. The side rows are shared
    by many users or items, so they pull the factors of sparsely rated ones towards their
    group (docs/QUALITY.md measures the component with them).
    The ranking embeddings x, y are separate from the rating factors p, q: the sampled
    softmax pulls embedding norms towards popularity, which hurts the rating fit.
    """

    mu: Tensor

    def __init__(
        self,
        fm: FeatureMap,
        *,
        dim: int = 64,
        score_dim: int = 64,
        global_mean: float = 3.5,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.tower_prefixes = ("user_rank.", "item_rank.", "item_rank_bias.")
        self.register_buffer("mu", torch.tensor(float(global_mean)))
        self.factors = FieldEmbedding(fm, dim, init_std=init_std)
        self.biases = FieldEmbedding(fm, 1, init_std=0.0)
        self.user_rank = nn.Embedding(fm.user_vocab, score_dim)
        self.item_rank = nn.Embedding(fm.item_vocab, score_dim)
        self.item_rank_bias = nn.Embedding(fm.item_vocab, 1)
        for emb in (self.user_rank, self.item_rank):
            nn.init.normal_(emb.weight, std=init_std)
        nn.init.zeros_(self.item_rank_bias.weight)

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        x = self.user_rank(user)  # [B, D]
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [B, D+1]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        return torch.cat([self.item_rank(item), self.item_rank_bias(item)], dim=1)  # [N, D+1]

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        p = self.factors.user_side(user, user_feats).sum(dim=1)  # [B, d]
        q = self.factors.item_side(item, item_feats, item_genres).sum(dim=1)  # [B, d]
        bias = self.biases(user, item, user_feats, item_feats, item_genres).sum(dim=(1, 2))  # [B]
        rating = self.mu + bias + (p * q).sum(dim=1)  # [B]
        score = self.tower_score(user, item, user_feats, item_feats, item_genres)  # [B]
        return {"rating": rating, "score": score}

    def regularizer(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        args = (user, item, user_feats, item_feats, item_genres)
        return self.factors.squared_norm(*args) + self.biases.squared_norm(*args)  # [B]
