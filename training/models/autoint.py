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
from training.models.mf import FieldEmbedding, TowerScoring


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer with a residual projection and ReLU."""

    def __init__(self, d_in: int, *, heads: int, d_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.d_head = d_head
        d_out = heads * d_head
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=False)
        self.residual = nn.Linear(d_in, d_out, bias=False)
        self.scale = float(d_head) ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        batch, n_fields, _ = x.shape
        qkv = self.qkv(x).reshape(batch, n_fields, 3, self.heads, self.d_head)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, F, dh]
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax((q @ k.transpose(-1, -2)) * self.scale, dim=-1)  # [B, H, F, F]
        out = (att @ v).transpose(1, 2).reshape(batch, n_fields, -1)  # [B, F, H*dh]
        return torch.relu(out + self.residual(x))  # [B, F, H*dh]


def attention_stack(d_in: int, *, layers: int, heads: int, d_head: int) -> nn.Sequential:
    blocks: list[nn.Module] = []
    for k in range(layers):
        width = d_in if k == 0 else heads * d_head
        blocks.append(InteractingLayer(width, heads=heads, d_head=d_head))
    return nn.Sequential(*blocks)


class AutoInt(TowerScoring):
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

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        e = self.embed(user, item, user_feats, item_feats, item_genres)  # [B, F, d]
        rep = self.attention(e).flatten(1)  # [B, F*H*dh]
        lin = self.linear(user, item, user_feats, item_feats, item_genres).sum(dim=(1, 2))  # [B]
        rating = self.mu + lin + self.out(rep).squeeze(1)  # [B]
        score = self.tower_score(user, item, user_feats, item_feats, item_genres)  # [B]
        return {"rating": rating, "score": score, "repr": rep}

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
