"""The distilled student: a light two-tower model with two heads and removable units.

Why this shape: serving scores the whole catalogue for one user, so the student keeps the
teacher's two-tower ranking head (one user vector against every item vector) and a biased
MF rating head over tower outputs. Every structured unit can be removed by building new,
smaller tensors (`prune`), which is what progressive pruning relies on.

Each side's embedding is two blocks of dimensions. The score head reads only the first and
is linear in it, so that it can hold the teacher's score factorisation exactly (training/
student_init.py); the rating head, one hidden layer with a linear skip, reads both. Side
features add to both blocks, so they still help cold users and items. One block for
both heads confines the score and rating matrices to one row space per side: on held-back
data the best rank-20 subspace shared by the teacher's two matrices keeps 0.958 of its
NDCG@10 where rank 16 for the score alone keeps 0.992, and rank 6 for the rating alone
1.004x its RMSE (bench/results/student-split/head-rank.md).

Unit kinds (see UNIT_KINDS): each block's embedding dimensions on each side, the hidden
neurons of each tower, and the rating and score factors (the dot-product dimensions of each
head).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import Tensor, nn

from training.features import FeatureMap, FeatureTables
from training.models.base import FactoredRating, RatedScore, TwoHeadModel

UNIT_KINDS = (
    "user_score_dim",
    "user_rating_dim",
    "item_score_dim",
    "item_rating_dim",
    "user_hidden",
    "item_hidden",
    "rating_factor",
    "score_factor",
)
RATING_DIMS = ("user_rating_dim", "item_rating_dim")
SCORE_RANK = ("user_score_dim", "item_score_dim", "score_factor")
# A block of a parameter: (parameter, index), the block being `parameter[index]`.
ParamBlock = tuple[Tensor, tuple[slice, ...]]


@dataclass(frozen=True)
class StudentShape:
    """Widths of a student; pruning only ever shrinks them."""

    user_score_dim: int = 48
    user_rating_dim: int = 16
    item_score_dim: int = 48
    item_rating_dim: int = 16
    user_hidden: int = 128
    item_hidden: int = 128
    rating_factor: int = 32
    score_factor: int = 64

    def scaled(self, factor: float) -> StudentShape:
        return StudentShape(**{k: max(2, round(v * factor)) for k, v in self.as_dict().items()})

    def as_dict(self) -> dict[str, int]:
        return {k: int(getattr(self, k)) for k in UNIT_KINDS}

    @property
    def user_dim(self) -> int:
        return self.user_score_dim + self.user_rating_dim

    @property
    def item_dim(self) -> int:
        return self.item_score_dim + self.item_rating_dim


def shape_params(fm: FeatureMap, shape: StudentShape) -> int:
    """Parameter count of a student of this shape, without building it."""
    du, di = shape.user_dim, shape.item_dim
    hu, hi = shape.user_hidden, shape.item_hidden
    kr, ks = shape.rating_factor, shape.score_factor
    user_rows = fm.user_vocab + sum(fm.user_field_vocabs)
    item_rows = fm.item_vocab + sum(fm.item_field_vocabs) + fm.n_genres
    embeds = user_rows * du + item_rows * di
    hidden = (du * hu + hu) + (di * hi + hi)
    heads = (shape.user_score_dim + 1) * ks + (hu + du + 1) * kr
    heads += (shape.item_score_dim + 1) * ks + (hi + di + 1) * kr
    towers = hidden + heads
    biases = fm.user_vocab + 2 * fm.item_vocab
    return embeds + towers + biases


def _linear(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    layer.weight = nn.Parameter(weight.detach().clone())
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone())
    return layer


def _embedding(weight: Tensor) -> nn.Embedding:
    return nn.Embedding.from_pretrained(weight.detach().clone(), freeze=False)


class Tower(nn.Module):
    """Embeddings of one side -> x = [x_s; x_r] [B, Ds + Dr]; s = S x_s (the score head,
    linear in its block); h = relu(W x), p = A [h; x] (the rating head, reading both)."""

    def __init__(
        self,
        vocabs: list[int],
        n_genres: int,
        *,
        score_dim: int,
        rating_dim: int,
        hidden: int,
        rating_factor: int,
        score_factor: int,
        init_std: float = 0.05,
    ) -> None:
        super().__init__()
        dim = score_dim + rating_dim
        # vocabs[0] is the id table; the rest are side fields. n_genres = 0 for users.
        self.tables = nn.ModuleList(nn.Embedding(v, dim) for v in vocabs)
        self.genre: nn.Linear | None
        self.genre = nn.Linear(n_genres, dim, bias=False) if n_genres > 0 else None
        self.hidden = nn.Linear(dim, hidden)
        self.rating_out = nn.Linear(hidden + dim, rating_factor)
        self.score_out = nn.Linear(score_dim, score_factor)
        for table in self.embeddings():
            nn.init.normal_(table.weight, std=init_std)
        if self.genre is not None:
            nn.init.normal_(self.genre.weight, std=init_std)

    def embeddings(self) -> list[nn.Embedding]:
        return [cast(nn.Embedding, t) for t in self.tables]

    @property
    def score_dim(self) -> int:
        return int(self.score_out.in_features)

    @property
    def dim(self) -> int:
        return int(self.hidden.in_features)

    @property
    def rating_dim(self) -> int:
        return self.dim - self.score_dim

    def embed(self, ids: Tensor, feats: Tensor, genres: Tensor | None) -> Tensor:
        """[B] ids, [B, F] side fields, [B, G] genres (item side) -> [B, D]."""
        x = self.tables[0](ids)  # [B, D]
        for j, table in enumerate(self.tables[1:]):
            x = x + table(feats[:, j])  # [B, D]
        if self.genre is not None and genres is not None:
            count = genres.sum(dim=1, keepdim=True).clamp(min=1.0)  # [B, 1]
            x = x + self.genre(genres) / count  # [B, D]
        return x

    def forward(
        self, x: Tensor, *, dim_mask: Tensor | None = None, hidden_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        if dim_mask is not None:
            x = x * dim_mask  # [B, D]
        h = torch.relu(self.hidden(x))  # [B, H]
        if hidden_mask is not None:
            h = h * hidden_mask
        rating = self.rating_out(torch.cat([h, x], dim=1))  # [B, Kr]
        return rating, self.score_out(x[:, : self.score_dim])  # [B, Kr], [B, Ks]

    # ---- structured pruning: each method replaces tensors by new, smaller ones

    def prune_dim(self, keep: Tensor, *, block: str) -> None:
        """Keeps the dimensions `keep` of one block ("score" or "rating")."""
        ds, dr, hidden = self.score_dim, self.rating_dim, self.hidden.out_features
        if block == "score":
            columns = torch.cat([keep, ds + torch.arange(dr)])
            self.score_out = _linear(self.score_out.weight[:, keep], self.score_out.bias)
        else:
            columns = torch.cat([torch.arange(ds), ds + keep])
        self.hidden = _linear(self.hidden.weight[:, columns], self.hidden.bias)
        self.rating_out = _linear(
            self.rating_out.weight[:, torch.cat([torch.arange(hidden), hidden + columns])],
            self.rating_out.bias,
        )
        for j, table in enumerate(self.embeddings()):
            self.tables[j] = _embedding(table.weight[:, columns])
        if self.genre is not None:
            self.genre = _linear(self.genre.weight[columns], None)

    def prune_hidden(self, keep: Tensor) -> None:
        hidden = self.hidden.out_features
        self.hidden = _linear(self.hidden.weight[keep], self.hidden.bias[keep])
        cols = torch.cat([keep, hidden + torch.arange(self.dim)])
        self.rating_out = _linear(self.rating_out.weight[:, cols], self.rating_out.bias)

    def prune_rating_factor(self, keep: Tensor) -> None:
        self.rating_out = _linear(self.rating_out.weight[keep], self.rating_out.bias[keep])

    def prune_score_factor(self, keep: Tensor) -> None:
        self.score_out = _linear(self.score_out.weight[keep], self.score_out.bias[keep])


def _dim_mask(masks: Mapping[str, Tensor], side: str, tower: Tower, rows: int) -> Tensor | None:
    """One side's [B, Ds + Dr] embedding mask from its two blocks' masks (ones for a block
    without one), or None when neither block has one."""
    score, rating = masks.get(f"{side}_score_dim"), masks.get(f"{side}_rating_dim")
    if score is None and rating is None:
        return None
    ones = tower.hidden.weight.new_ones
    score = ones(rows, tower.score_dim) if score is None else score
    rating = ones(rows, tower.rating_dim) if rating is None else rating
    return torch.cat([score, rating], dim=1)  # [B, Ds + Dr]


def _distinct(ids: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The distinct ids [K], one row holding each [K], and each row's distinct index [B]."""
    distinct, inverse = torch.unique(ids, return_inverse=True)
    rows = torch.arange(ids.numel(), device=ids.device)
    # Duplicate targets keep an arbitrary one of their rows: any of them will do.
    row = torch.zeros_like(distinct).scatter_(0, inverse, rows)
    return distinct, row, inverse


class Student(TwoHeadModel, FactoredRating, RatedScore):
    """rating = mu + b_u + b_i + <p_u, q_i>;
    score = <s_u, t_i> + c_i + g * (rating - mean_r) / std_r.

    (p, s) come from the user tower and (q, t) from the item tower; 'repr' is
    [p*q, s*t], the per-factor interactions, which feature distillation projects onto the
    teacher's AutoInt representation. g (`rating_score_weight`) is 0 while the student
    trains; `rank_with_rating` sets it, as the teacher's score adds MF's rating.
    """

    mu: Tensor

    def __init__(
        self, fm: FeatureMap, *, shape: StudentShape | None = None, global_mean: float = 3.5
    ) -> None:
        super().__init__()
        self.rating_bounds = fm.rating_scale
        shape = shape or StudentShape()
        self.register_buffer("mu", torch.tensor(float(global_mean)))
        self.user = Tower(
            [fm.user_vocab, *fm.user_field_vocabs],
            0,
            score_dim=shape.user_score_dim,
            rating_dim=shape.user_rating_dim,
            hidden=shape.user_hidden,
            rating_factor=shape.rating_factor,
            score_factor=shape.score_factor,
        )
        self.item = Tower(
            [fm.item_vocab, *fm.item_field_vocabs],
            fm.n_genres,
            score_dim=shape.item_score_dim,
            rating_dim=shape.item_rating_dim,
            hidden=shape.item_hidden,
            rating_factor=shape.rating_factor,
            score_factor=shape.score_factor,
        )
        self.user_bias = nn.Embedding(fm.user_vocab, 1)
        self.item_bias = nn.Embedding(fm.item_vocab, 1)
        self.item_score_bias = nn.Embedding(fm.item_vocab, 1)
        for emb in (self.user_bias, self.item_bias, self.item_score_bias):
            nn.init.zeros_(emb.weight)

    @property
    def shape(self) -> StudentShape:
        return StudentShape(
            user_score_dim=self.user.score_dim,
            user_rating_dim=self.user.rating_dim,
            item_score_dim=self.item.score_dim,
            item_rating_dim=self.item.rating_dim,
            user_hidden=self.user.hidden.out_features,
            item_hidden=self.item.hidden.out_features,
            rating_factor=self.user.rating_out.out_features,
            score_factor=self.user.score_out.out_features,
        )

    def heads(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
        *,
        masks: Mapping[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """`masks` (kind -> [B, n_units] multipliers) exist for group Fisher estimates."""
        m = masks or {}
        xu = self.user.embed(user, user_feats, None)  # [B, Du]
        xi = self.item.embed(item, item_feats, item_genres)  # [B, Di]
        u_mask = _dim_mask(m, "user", self.user, user.shape[0])
        i_mask = _dim_mask(m, "item", self.item, item.shape[0])
        p, s = self.user(xu, dim_mask=u_mask, hidden_mask=m.get("user_hidden"))
        q, t = self.item(xi, dim_mask=i_mask, hidden_mask=m.get("item_hidden"))
        if "rating_factor" in m:
            p = p * m["rating_factor"]  # [B, Kr]
        if "score_factor" in m:
            s = s * m["score_factor"]  # [B, Ks]
        return self._pair_heads(user, item, (p, s), (q, t))

    def training_heads(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
        *,
        item_outputs: tuple[Tensor, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """`heads` for batches of lists, whose rows repeat each user about a hundred times
        and many items: each tower runs once per distinct id and is gathered back, the same
        outputs (up to float rounding) at a fraction of the work (docs/SCALE.md item 21).
        Rows of one id must carry the same side features, as rows looked up from
        FeatureTables do. `item_outputs`: every item's (`item_outputs`), where the batch
        has computed them already for its catalogue scores."""
        users, user_row, user_of = _distinct(user)  # [U], [U], [B]
        xu = self.user.embed(users, user_feats[user_row], None)  # [U, Du]
        p, s = self.user(xu)  # [U, Kr], [U, Ks]
        if item_outputs is None:
            items, item_row, item_of = _distinct(item)  # [I], [I], [B]
            xi = self.item.embed(items, item_feats[item_row], item_genres[item_row])  # [I, Di]
            item_outputs = self.item(xi)  # [I, Kr], [I, Ks]
        else:
            item_of = item  # row j of the catalogue's outputs is item index j
        q, t = item_outputs
        return self._pair_heads(user, item, (p[user_of], s[user_of]), (q[item_of], t[item_of]))

    def item_outputs(self, item_feats: Tensor, item_genres: Tensor) -> tuple[Tensor, Tensor]:
        """Every item's tower outputs (row j of the item tables is item index j): [M, Kr],
        [M, Ks]."""
        items = torch.arange(item_feats.shape[0], device=item_feats.device)
        return self.item(self.item.embed(items, item_feats, item_genres))

    def _pair_heads(
        self, user: Tensor, item: Tensor, ps: tuple[Tensor, Tensor], qt: tuple[Tensor, Tensor]
    ) -> dict[str, Tensor]:
        """The outputs from each pair's tower outputs: ([B, Kr], [B, Ks]) per side."""
        (p, s), (q, t) = ps, qt
        pq = p * q  # [B, Kr]
        st = s * t  # [B, Ks]
        bias = self.user_bias(user).squeeze(1) + self.item_bias(item).squeeze(1)  # [B]
        rating = self.mu + bias + pq.sum(dim=1)  # [B]
        score = st.sum(dim=1) + self.item_score_bias(item).squeeze(1)  # [B]
        score = score + self.rating_term(rating)  # [B]
        return {"rating": rating, "score": score, "repr": torch.cat([pq, st], dim=1)}

    def ranks_with_rating(self) -> bool:
        # A Python bool on purpose: the exported towers are one width or the other.
        return bool(self.rating_score_weight != 0)

    @torch.no_grad()
    def rank_with_rating(self, weight: float, users: np.ndarray, tables: FeatureTables) -> None:
        """score += weight x the rating standardised over (`users` x whole catalogue)."""
        self.standardise_rating(self.rating_matrix(users, tables))  # [U, M]
        self.rating_score_weight.fill_(float(weight))

    # Retrieval vectors. Ranking with the rating adds its factors, so that
    # user · item = <s, t> + c_i + a (mu + b_u + b_i + <p, q> - mean_r), a = g / std_r:
    # user [s, a p, a (b_u + mu - mean_r), 1] and item [t, q, 1, c_i + a b_i].
    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        p, s = self.user(self.user.embed(user, user_feats, None))  # [B, Kr], [B, Ks]
        one = torch.ones_like(s[:, :1])  # [B, 1]
        if not self.ranks_with_rating():
            return torch.cat([s, one], dim=1)  # [B, Ks+1]
        shift = self.rating_term(self.user_bias(user) + self.mu)  # [B, 1]
        return torch.cat([s, self.rating_scale() * p, shift, one], dim=1)  # [B, Ks+Kr+2]

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        q, t = self.item(self.item.embed(item, item_feats, item_genres))  # [N, Kr], [N, Ks]
        bias = self.item_score_bias(item)  # [N, 1]
        if not self.ranks_with_rating():
            return torch.cat([t, bias], dim=1)  # [N, Ks+1]
        bias = bias + self.rating_scale() * self.item_bias(item)  # [N, 1]
        return torch.cat([t, q, torch.ones_like(bias), bias], dim=1)  # [N, Ks+Kr+2]

    # The rating in factored form (training/rating_factors.py): mu + [p_u, b_u, 1] · [q_i, 1, b_i].
    def user_rating_factors(self, user: Tensor, user_feats: Tensor) -> Tensor:
        p, _ = self.user(self.user.embed(user, user_feats, None))  # [B, Kr]
        return torch.cat([p, self.user_bias(user), torch.ones_like(p[:, :1])], dim=1)  # [B, Kr+2]

    def item_rating_factors(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        q, _ = self.item(self.item.embed(item, item_feats, item_genres))  # [N, Kr]
        return torch.cat([q, torch.ones_like(q[:, :1]), self.item_bias(item)], dim=1)  # [N, Kr+2]

    def rating_offset(self) -> float:
        return float(self.mu)

    def catalogue_scores(
        self, user: Tensor, user_feats: Tensor, item_feats: Tensor, item_genres: Tensor
    ) -> Tensor:
        """Scores of every item (row j of the item tables is item index j): [B, M]."""
        return self.scores_of(user, user_feats, self.item_outputs(item_feats, item_genres))

    def scores_of(
        self, user: Tensor, user_feats: Tensor, item_outputs: tuple[Tensor, Tensor]
    ) -> Tensor:
        """Scores of every item from its `item_outputs`: [B, M]."""
        p, s = self.user(self.user.embed(user, user_feats, None))  # [B, Kr], [B, Ks]
        q, t = item_outputs  # [M, Kr], [M, Ks]
        scores = s @ t.T + self.item_score_bias.weight.T  # [B, M]
        if not self.ranks_with_rating():
            return scores
        bias = self.user_bias(user) + self.item_bias.weight.T  # [B, M]
        return scores + self.rating_term(self.mu + bias + p @ q.T)  # [B, M]

    def score_matrix(self, users: np.ndarray, tables: FeatureTables) -> Tensor:
        """Scores of every item index 0..n_items for each user: [len(users), n_items + 1]."""
        return self.catalogue_scores(
            torch.as_tensor(users, dtype=torch.long),
            torch.as_tensor(tables.user_feats[users]),
            torch.as_tensor(tables.item_feats),
            torch.as_tensor(tables.item_genres),
        )

    def score_path(self) -> list[ParamBlock]:
        """Every parameter block that only the score head reads, as (parameter, index)
        with `parameter[index]` the block: each tower's score columns of its embeddings
        (every row), its score projection, and the items' score biases."""
        whole = (slice(None),)
        blocks: list[ParamBlock] = [(self.item_score_bias.weight, whole)]
        for tower in (self.user, self.item):
            columns = (slice(None), slice(0, tower.score_dim))
            blocks += [(table.weight, columns) for table in tower.embeddings()]
            if tower.genre is not None:
                blocks.append((tower.genre.weight, (slice(0, tower.score_dim),)))
            blocks += [(tower.score_out.weight, whole), (tower.score_out.bias, whole)]
        return blocks

    def unit_counts(self) -> dict[str, int]:
        return self.shape.as_dict()

    def prune(self, kind: str, keep: Tensor) -> None:
        """Keeps only the units `keep` (sorted, unique indices) of one kind."""
        if kind not in UNIT_KINDS:
            raise ValueError(f"unknown unit kind {kind!r}; choose one of {UNIT_KINDS}")
        keep = torch.as_tensor(keep, dtype=torch.long).unique(sorted=True)
        n = self.unit_counts()[kind]
        if keep.numel() == 0 or int(keep.min()) < 0 or int(keep.max()) >= n:
            raise ValueError(f"keep indices for {kind} must be a non-empty subset of 0..{n - 1}")
        side, _, rest = kind.partition("_")
        tower = self.user if side == "user" else self.item
        if rest in ("score_dim", "rating_dim"):
            tower.prune_dim(keep, block=rest.removesuffix("_dim"))
        elif kind == "user_hidden":
            self.user.prune_hidden(keep)
        elif kind == "item_hidden":
            self.item.prune_hidden(keep)
        elif kind == "rating_factor":
            self.user.prune_rating_factor(keep)
            self.item.prune_rating_factor(keep)
        else:
            self.user.prune_score_factor(keep)
            self.item.prune_score_factor(keep)

    def unit_params(self, kind: str) -> list[Tensor]:
        """The parameter slices that belong to each unit of `kind`, as [n_units, -1] views.

        Used by magnitude pruning; the rows are the weights that `prune` removes.
        """
        u, i = self.user, self.item
        side, _, rest = kind.partition("_")
        if rest in ("score_dim", "rating_dim"):
            tower = u if side == "user" else i
            ds, h = tower.score_dim, tower.hidden.out_features
            block = slice(0, ds) if rest == "score_dim" else slice(ds, tower.dim)
            parts: list[Tensor] = [t.weight[:, block].T for t in tower.embeddings()]
            if tower.genre is not None:
                parts.append(tower.genre.weight[block])
            parts += [tower.hidden.weight[:, block].T, tower.rating_out.weight[:, h:][:, block].T]
            return [*parts, tower.score_out.weight.T] if rest == "score_dim" else parts
        if kind in ("user_hidden", "item_hidden"):
            tower = u if kind == "user_hidden" else i
            h = tower.hidden.out_features
            return [
                tower.hidden.weight,
                tower.hidden.bias.unsqueeze(1),
                tower.rating_out.weight[:, :h].T,
            ]
        layer = "rating_out" if kind == "rating_factor" else "score_out"
        if kind not in UNIT_KINDS:
            raise ValueError(f"unknown unit kind {kind!r}")
        parts = []
        for tower in (u, i):
            lin: nn.Linear = getattr(tower, layer)
            parts += [lin.weight, lin.bias.unsqueeze(1)]
        return parts

    def unit_cost(self, kind: str) -> int:
        """Parameters removed with one unit of `kind`."""
        return sum(int(p.shape[1]) for p in self.unit_params(kind))
