"""xDeepFM (Lian et al., 2018): linear part + Compressed Interaction Network + DNN.

The rating head is the full xDeepFM over every field of the pair; its linear part holds
the user and item biases. The ranking head is a two-tower MLP over the user-side and
item-side field embeddings of its own table; with `history`, the user tower's output also
holds the user's training items (SVD++'s implicit term, as in MF's ranking vector).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from training.features import FeatureMap
from training.models.configs import XDeepFMConfig
from training.models.layers import CIN, FieldEmbedding, TowerScoring, UserHistory, mlp


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
        history: bool = False,
        global_mean: float = 3.5,
    ) -> None:
        super().__init__()
        self.rating_bounds = fm.rating_scale
        prefixes = ("rank_embed.", "user_mlp.", "item_mlp.", "history.", "user_offset.")
        self.tower_prefixes = prefixes
        self.history: UserHistory | None = None
        self.item_vocab = fm.item_vocab
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
        # Where `fold_history` puts each user's history term once training is over, so that
        # the trained user tower is a lookup and an MLP again. Not trained: during training
        # the term comes from the history itself. A parameter, not a buffer, so that model
        # sizes count it.
        self.user_offset: nn.Embedding | None = None
        if history:
            self.user_offset = nn.Embedding(fm.user_vocab, score_dim)
            nn.init.zeros_(self.user_offset.weight)
            self.user_offset.weight.requires_grad_(False)

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
            history=config.history,
            global_mean=global_mean,
        )

    def attach_history(self, indptr: Tensor, items: Tensor, *, alpha: float) -> None:
        """Users' training items as CSR rows, added to the user tower's output."""
        if self.user_offset is None:
            raise ValueError("this XDeepFM was built without history (XDeepFMConfig.history)")
        dim = self.user_offset.embedding_dim
        term = UserHistory(self.item_vocab, dim, indptr=indptr, items=items, alpha=alpha)
        self.history = term.to(self.mu.device)

    @torch.no_grad()
    def fold_history(self) -> None:
        if self.history is not None and self.user_offset is not None:
            self.user_offset.weight += self.history.vectors(self.user_offset.num_embeddings)
        self.history = None

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
        return self._user_vector(user, user_feats, exclude=None)  # [B, D]

    def train_user_tower(self, user: Tensor, user_feats: Tensor, item: Tensor) -> Tensor:
        return self._user_vector(user, user_feats, exclude=item)  # [B, D]

    def _user_vector(self, user: Tensor, user_feats: Tensor, *, exclude: Tensor | None) -> Tensor:
        x = self.user_mlp(self.rank_embed.user_side(user, user_feats).flatten(1))  # [B, D]
        if self.user_offset is not None:
            x = x + self.user_offset(user)  # [B, D]
        if self.history is not None:
            x = x + self.history(user, exclude=exclude)  # [B, D]
        return x

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
