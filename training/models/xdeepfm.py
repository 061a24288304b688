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
from training.models.mf import FieldEmbedding, TowerScoring, mlp


class CIN(nn.Module):
    """Compressed Interaction Network: explicit vector-wise feature interactions."""

    def __init__(self, n_fields: int, layer_sizes: Sequence[int]) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        prev = n_fields
        for size in layer_sizes:
            self.convs.append(nn.Conv1d(prev * n_fields, size, kernel_size=1))
            prev = size
        self.out_dim = sum(layer_sizes)

    def forward(self, x0: Tensor) -> Tensor:
        batch, _, dim = x0.shape
        xk = x0  # [B, H_k, d]
        pooled = []
        for conv in self.convs:
            z = (xk.unsqueeze(2) * x0.unsqueeze(1)).reshape(batch, -1, dim)  # [B, H_k*F, d]
            xk = torch.relu(conv(z))  # [B, H_k+1, d]
            pooled.append(xk.sum(dim=2))  # [B, H_k+1]
        return torch.cat(pooled, dim=1)  # [B, sum H]


class XDeepFM(TowerScoring):
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
        self.cin = CIN(n_fields, cin_layers)
        self.cin_out = nn.Linear(self.cin.out_dim, 1)
        self.dnn = mlp([n_fields * dim, *dnn_layers, 1], dropout=dropout)
        self.rank_embed = FieldEmbedding(fm, dim)
        self.user_mlp = mlp([self.rank_embed.n_user_fields * dim, *tower_layers, score_dim])
        self.item_mlp = mlp([self.rank_embed.n_item_fields * dim, *tower_layers, score_dim])

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        e = self.embed(user, item, user_feats, item_feats, item_genres)  # [B, F, d]
        lin = self.linear(user, item, user_feats, item_feats, item_genres).sum(dim=(1, 2))  # [B]
        cin = self.cin_out(self.cin(e)).squeeze(1)  # [B]
        deep = self.dnn(e.flatten(1)).squeeze(1)  # [B]
        rating = self.mu + lin + cin + deep  # [B]
        score = self.tower_score(user, item, user_feats, item_feats, item_genres)  # [B]
        return {"rating": rating, "score": score}

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
