"""xDeepFM (Lian et al., 2018): linear part + Compressed Interaction Network + DNN.

The rating head is the full xDeepFM over every field of the pair; its linear part holds
the user and item biases. The ranking head is a two-tower MLP over the user-side and
item-side field embeddings of its own table.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from training.features import FeatureMap
from training.models.configs import XDeepFMConfig
from training.models.layers import CIN, FieldEmbedding, TowerScoring, mlp


class XDeepFM(TowerScoring):
    """rating = mu + linear + CIN + DNN over every field; score = MLP towers' dot product."""

    mu: Tensor

    def __init__(
        self,
        fm: FeatureMap,
        *,
        dim: int = 16,
        cin_layers: Sequence[int] = (64, 64),
        dnn_layers: Sequence[int] = (128, 64),
        dropout: float = 0.1,
        score_dim: int = 64,
        tower_layers: Sequence[int] = (128,),
        global_mean: float = 3.5,
    ) -> None:
        super().__init__()
        self.tower_prefixes = ("rank_embed.", "user_mlp.", "item_mlp.")
        self.register_buffer("mu", torch.tensor(float(global_mean)))
        self.embed = FieldEmbedding(fm, dim)
        self.linear = FieldEmbedding(fm, 1, init_std=0.0)
        n_fields = self.embed.n_fields
        self.cin = CIN(n_fields, cin_layers, dim=dim)
        self.cin_out = nn.Linear(self.cin.out_dim, 1)
        self.dnn = mlp([n_fields * dim, *dnn_layers, 1], dropout=dropout)
        self.rank_embed = FieldEmbedding(fm, dim)
        self.user_mlp = mlp([self.rank_embed.n_user_fields * dim, *tower_layers, score_dim])
        self.item_mlp = mlp([self.rank_embed.n_item_fields * dim, *tower_layers, score_dim])

    @classmethod
    def from_config(
        cls, config: XDeepFMConfig, fm: FeatureMap, *, global_mean: float = 3.5
    ) -> XDeepFM:
        return cls(
            fm,
            dim=config.dim,
            cin_layers=config.cin_layers,
            dnn_layers=config.dnn_layers,
            dropout=config.dropout,
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
        lin = self.linear(user, item, user_feats, item_feats, item_genres).sum(dim=(1, 2))  # [B]
        cin = self.cin_out(self.cin(e)).squeeze(1)  # [B]
        deep = self.dnn(e.flatten(1)).squeeze(1)  # [B]
        return {"rating": self.mu + lin + cin + deep}  # [B]

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        return self.user_mlp(self.rank_embed.user_side(user, user_feats).flatten(1))  # [B, D]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        side = self.rank_embed.item_side(item, item_feats, item_genres)  # [N, 2+Fi, d]
        return self.item_mlp(side.flatten(1))  # [N, D]

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
