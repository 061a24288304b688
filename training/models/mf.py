"""Biased matrix factorisation ("SVD") with side features, the first teacher component."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from training.features import FeatureMap
from training.models.base import FactoredRating, Inputs
from training.models.configs import MFConfig
from training.models.layers import FieldEmbedding, TowerScoring, UserHistory


class BiasedMF(TowerScoring, FactoredRating):
    """r(u, i) = mu + b_u + b_i + <p_u, q_i>; score(u, i) = <x_u, y_i> + c_i.

    Feature-based biased MF (as in SVDFeature, Chen et al., 2012): a user's factor p_u and
    bias b_u are the sums of the rows of the user id and of each user field (age, gender,
    occupation, zip prefix); items likewise, with the genre bag. The side rows are shared
    by many users or items, so they pull the factors of sparsely rated ones towards their
    group (docs/QUALITY.md measures the component with them).
    The ranking embeddings x, y are separate from the rating factors p, q: the sampled
    softmax pulls embedding norms towards popularity, which hurts the rating fit.

    In training, the ranking user vector also holds the user's training items
    (`UserHistory`, attached by `attach_history`); `fold_history` then adds that term to
    each user's row of x, so the trained model, its checkpoint and its ONNX user tower are
    a plain embedding lookup again, with the same scores.
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
        self.rating_bounds = fm.rating_scale
        self.tower_prefixes = ("user_rank.", "item_rank.", "item_rank_bias.", "history.")
        self.history: UserHistory | None = None
        self.rating_history: UserHistory | None = None
        self.register_buffer("mu", torch.tensor(float(global_mean)))
        self.factors = FieldEmbedding(fm, dim, init_std=init_std)
        self.biases = FieldEmbedding(fm, 1, init_std=0.0)
        self.user_rank = nn.Embedding(fm.user_vocab, score_dim)
        self.item_rank = nn.Embedding(fm.item_vocab, score_dim)
        self.item_rank_bias = nn.Embedding(fm.item_vocab, 1)
        for emb in (self.user_rank, self.item_rank):
            nn.init.normal_(emb.weight, std=init_std)
        nn.init.zeros_(self.item_rank_bias.weight)

    @classmethod
    def from_config(cls, config: MFConfig, fm: FeatureMap, *, global_mean: float = 3.5) -> BiasedMF:
        return cls(fm, dim=config.dim, score_dim=config.score_dim, global_mean=global_mean)

    def attach_history(
        self, indptr: Tensor, items: Tensor, *, alpha: float, rating: bool = False
    ) -> None:
        """Users' training items as CSR rows (user index u: items[indptr[u]:indptr[u+1]]),
        for the ranking vector and, with `rating`, the rating factor p_u (SVD++)."""
        dev = self.mu.device

        def term(dim: int) -> UserHistory:
            n = self.item_rank.num_embeddings
            return UserHistory(n, dim, indptr=indptr, items=items, alpha=alpha).to(dev)

        self.history = term(self.item_rank.embedding_dim)
        if rating:
            self.rating_history = term(self.factors.dim)

    @torch.no_grad()
    def fold_history(self) -> None:
        """Adds the history terms to every user's rows and drops the histories."""
        n_users = self.user_rank.num_embeddings
        if self.history is not None:
            self.user_rank.weight += self.history.vectors(n_users)
            self.history = None
        if self.rating_history is not None:
            # The user id's rows come first in the factor table (FieldEmbedding).
            rows = self.factors.user_offsets[0] + torch.arange(n_users, device=self.mu.device)
            self.factors.table.weight[rows] += self.rating_history.vectors(n_users)
            self.rating_history = None

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        return self._rank_vector(user, exclude=None)  # [B, D+1]

    def train_user_tower(self, user: Tensor, user_feats: Tensor, item: Tensor) -> Tensor:
        return self._rank_vector(user, exclude=item)  # [B, D+1]

    def _rank_vector(self, user: Tensor, *, exclude: Tensor | None) -> Tensor:
        x = self.user_rank(user)  # [B, D]
        if self.history is not None:
            x = x + self.history(user, exclude=exclude)  # [B, D]
        return torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # [B, D+1]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        return torch.cat([self.item_rank(item), self.item_rank_bias(item)], dim=1)  # [N, D+1]

    def user_rating_factors(self, user: Tensor, user_feats: Tensor) -> Tensor:
        """The rating head's user side [p_u, b_u, 1]: [B, d+2] (`FactoredRating`)."""
        p = self.factors.user_side(user, user_feats).sum(dim=1)  # [B, d]
        hist = self._history_factor(user)
        if hist is not None:
            p = p + hist  # [B, d]
        b = self.biases.user_side(user, user_feats).sum(dim=1)  # [B, 1]
        return torch.cat([p, b, torch.ones_like(b)], dim=1)  # [B, d+2]

    def item_rating_factors(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        """The rating head's item side [q_i, 1, b_i]: [N, d+2], so that
        `rating_offset() + user_rating_factors · item_rating_factors` is the rating."""
        q = self.factors.item_side(item, item_feats, item_genres).sum(dim=1)  # [N, d]
        b = self.biases.item_side(item, item_feats, item_genres).sum(dim=1)  # [N, 1]
        return torch.cat([q, torch.ones_like(b), b], dim=1)  # [N, d+2]

    def rating_offset(self) -> float:
        return float(self.mu)

    def _history_factor(self, user: Tensor) -> Tensor | None:
        return None if self.rating_history is None else self.rating_history(user)  # [B, d]

    def _rating(self, args: Inputs, hist: Tensor | None) -> Tensor:
        user, item, user_feats, item_feats, item_genres = args
        p = self.factors.user_side(user, user_feats).sum(dim=1)  # [B, d]
        if hist is not None:
            p = p + hist  # [B, d]
        q = self.factors.item_side(item, item_feats, item_genres).sum(dim=1)  # [B, d]
        bias = self.biases(*args).sum(dim=(1, 2))  # [B]
        return self.mu + bias + (p * q).sum(dim=1)  # [B]

    def _penalty(self, args: Inputs, hist: Tensor | None) -> Tensor:
        norm = self.factors.squared_norm(*args) + self.biases.squared_norm(*args)  # [B]
        if hist is not None:
            # Without it the implicit term overfits within five epochs (validation RMSE).
            norm = norm + hist.pow(2).sum(dim=1)  # [B]
        return norm

    def rating_head(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
    ) -> dict[str, Tensor]:
        args = (user, item, user_feats, item_feats, item_genres)
        return {"rating": self._rating(args, self._history_factor(user))}  # [B]

    def regularizer(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> Tensor:
        args = (user, item, user_feats, item_feats, item_genres)
        return self._penalty(args, self._history_factor(user))  # [B]

    def rating_fit(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> tuple[Tensor, Tensor]:
        args = (user, item, user_feats, item_feats, item_genres)
        hist = self._history_factor(user)  # the user's whole history, once per batch
        return self._rating(args, hist), self._penalty(args, hist)  # [B], [B]
