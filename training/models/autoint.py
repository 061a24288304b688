"""AutoInt (Song et al., 2019): stacked multi-head self-attention over field embeddings.

The rating head attends over every field of the pair and adds the user and item biases of
a linear part. Its flattened attention output is the pair representation ('repr') that
the student distills into. The ranking head runs a separate attention stack over the
user-side and the item-side fields (two towers), mean-pooled and projected.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.features import FeatureMap
from training.models.configs import AutoIntConfig
from training.models.layers import FieldEmbedding, TowerScoring, attention_stack


class AutoInt(TowerScoring):
    """rating = mu + linear + attention over every field; score = attention towers' dot
    product; 'repr' = the rating head's flattened attention output."""

    mu: Tensor

    def __init__(
        self,
        fm: FeatureMap,
        *,
        dim: int = 16,
        layers: int = 3,
        heads: int = 2,
        d_head: int = 16,
        score_dim: int = 64,
        tower_layers: int = 1,
        global_mean: float = 3.5,
    ) -> None:
        super().__init__()
        self.rating_bounds = fm.rating_scale
        self.tower_prefixes = ("rank_embed.", "tower_attention.", "user_proj.", "item_proj.")
        self.register_buffer("mu", torch.tensor(float(global_mean)))
        self.embed = FieldEmbedding(fm, dim)
        self.linear = FieldEmbedding(fm, 1, init_std=0.0)
        self.attention = attention_stack(dim, layers=layers, heads=heads, d_head=d_head)
        self.repr_dim = self.embed.n_fields * heads * d_head
        self.out = nn.Linear(self.repr_dim, 1)
        self.rank_embed = FieldEmbedding(fm, dim)
        self.tower_attention = attention_stack(dim, layers=tower_layers, heads=heads, d_head=d_head)
        self.user_proj = nn.Linear(heads * d_head, score_dim)
        self.item_proj = nn.Linear(heads * d_head, score_dim)

    @classmethod
    def from_config(
        cls, config: AutoIntConfig, fm: FeatureMap, *, global_mean: float = 3.5
    ) -> AutoInt:
        return cls(
            fm,
            dim=config.dim,
            layers=config.layers,
            heads=config.heads,
            d_head=config.d_head,
            score_dim=config.score_dim,
            tower_layers=config.tower_layers,
            global_mean=global_mean,
        )

    def rating_head(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
    ) -> dict[str, Tensor]:
        e = self.embed(user, item, user_feats, item_feats, item_genres)  # [B, F, d]
        rep = self.attention(e).flatten(1)  # [B, F*H*dh]
        lin = self.linear(user, item, user_feats, item_feats, item_genres).sum(dim=(1, 2))  # [B]
        rating = self.mu + lin + self.out(rep).squeeze(1)  # [B]
        return {"rating": rating, "repr": rep}

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        side = self.rank_embed.user_side(user, user_feats)  # [B, 1+Fu, d]
        return self.user_proj(self.tower_attention(side).mean(dim=1))  # [B, D]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        side = self.rank_embed.item_side(item, item_feats, item_genres)  # [N, 2+Fi, d]
        return self.item_proj(self.tower_attention(side).mean(dim=1))  # [N, D]

    def regularizer(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        args = (user, item, user_feats, item_feats, item_genres)
        return self.embed.squared_norm(*args) + self.linear.squared_norm(*args)  # [B]
