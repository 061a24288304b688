"""Layers shared by the teacher components; the model files only compose them.

* `FieldEmbedding`: every field of a (user, item) pair as one [B, F, d] tensor.
* `mlp`: Linear/ReLU(/Dropout) stacks (xDeepFM's DNN and towers).
* `CIN`: xDeepFM's Compressed Interaction Network.
* `InteractingLayer`, `attention_stack`: AutoInt's multi-head self-attention.
* `UserHistory`: a user's training items as a ranking vector (SVD++'s implicit term).
* `TowerScoring`: the two-tower ranking base all three components (and the ensemble)
  share. score(u, i) = <U(u), V(i)>: ranking is evaluated over the whole catalogue, so the
  ranking loss needs the score of many items per user; towers make that one matrix
  product for training (a softmax over the catalogue or a sample of it) and for scoring a
  catalogue.

Parameter names are part of the checkpoints and of the bundle's provenance: attribute
names and the order in which layers are built must not change.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from training.device import model_device
from training.features import FeatureMap, FeatureTables
from training.models.base import TwoHeadModel


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
        return torch.cat([single, self._genre_bag(item_genres)], dim=1)  # [N, 2+Fi, d]

    def _genre_bag(self, item_genres: Tensor) -> Tensor:
        # The genres' mean as one product with the normalised bag: the normalisation is the
        # same for every table, so an exported graph computes it once for all of them.
        count = item_genres.sum(dim=1, keepdim=True).clamp(min=1.0)  # [N, 1]
        return ((item_genres / count) @ self.genre).unsqueeze(1)  # [N, 1, d]

    def forward(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
    ) -> Tensor:
        # Both sides in one gather (the offsets concatenation is a constant in an exported
        # graph): the rating graphs embed every pair in five such tables, and on the k
        # rows of a /recommend a graph's per-node overhead is a large part of its time.
        idx = torch.cat([user.unsqueeze(1), user_feats, item.unsqueeze(1), item_feats], dim=1)
        offsets = torch.cat([self.user_offsets, self.item_offsets])  # [F-1]
        single = self.table(idx + offsets)  # [B, F-1, d]
        return torch.cat([single, self._genre_bag(item_genres)], dim=1)  # [B, F, d]

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
    """Linear layers with ReLU between them (and after the last one if asked).

    [B, sizes[0]] -> [B, sizes[-1]]. Dropout follows each ReLU when `dropout` > 0, which
    shifts the Sequential's indices (and so the parameter names).
    """
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if k < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class CIN(nn.Module):
    """Compressed Interaction Network (Lian et al., 2018): explicit vector-wise feature
    interactions, [B, F, d] -> [B, sum(layer_sizes)]."""

    def __init__(self, n_fields: int, layer_sizes: Sequence[int], *, dim: int) -> None:
        super().__init__()
        self.n_fields = n_fields
        self.dim = dim  # the embedding width d of the input
        self.layer_sizes = tuple(layer_sizes)
        self.convs = nn.ModuleList()
        prev = n_fields
        for size in layer_sizes:
            self.convs.append(nn.Conv1d(prev * n_fields, size, kernel_size=1))
            prev = size
        self.out_dim = sum(layer_sizes)

    def forward(self, x0: Tensor) -> Tensor:  # x0: [B, F, d]
        # Channels first, with batch and embedding dimension flattened into one long last
        # axis: each layer's outer product is then a broadcast over contiguous rows and its
        # width-1 convolution one matrix product. The same sums as the paper's
        # [B, H*F, d] layout, faster on CPU, where PyTorch broadcasts poorly over a last
        # axis as short as F (docs/SCALE.md, item 15). The parameters stay the Conv1d
        # layers' (checkpoints, Fisher's units). Every reshape names its sizes from the
        # layer shapes, leaving only B*d to infer: an exported graph then needs no shape
        # arithmetic (a dozen nodes, each with its own overhead on a run of a few rows).
        x0c = x0.transpose(0, 1).reshape(self.n_fields, -1)  # [F, B*d]
        xk, width = x0c, self.n_fields  # [H_k, B*d], H_k
        pooled = []
        for conv, size in zip(self.convs, self.layer_sizes, strict=True):
            z = (xk.unsqueeze(1) * x0c.unsqueeze(0)).reshape(width * self.n_fields, -1)
            weight, bias = cast(Tensor, conv.weight), cast(Tensor, conv.bias)
            # z [H_k*F, B*d], weight [H_k+1, H_k*F, 1], bias [H_k+1]
            xk = torch.relu(torch.addmm(bias.unsqueeze(1), weight.squeeze(2), z))  # [H_k+1, B*d]
            pooled.append(xk.reshape(size, -1, self.dim).sum(dim=2))  # [H_k+1, B]
            width = size
        return torch.cat(pooled, dim=0).transpose(0, 1)  # [B, sum H]


class InteractingLayer(nn.Module):
    """One multi-head self-attention layer over fields (AutoInt, Song et al., 2019), with a
    residual projection and ReLU: [B, F, d_in] -> [B, F, heads*d_head]."""

    def __init__(self, d_in: int, *, heads: int, d_head: int) -> None:
        super().__init__()
        self.heads = heads
        self.d_head = d_head
        d_out = heads * d_head
        self.qkv = nn.Linear(d_in, 3 * d_out, bias=False)
        self.residual = nn.Linear(d_in, d_out, bias=False)
        self.scale = float(d_head) ** -0.5
        # Exported heads as one ONNX Attention node (FieldAttention); False traces them op by
        # op, as bench/rating_graph.py does to measure what the fused node saves.
        self.fused_export = True

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_export and torch.onnx.is_in_onnx_export():
            q, k, v = self.qkv(x).split(self.heads * self.d_head, dim=-1)  # 3 x [B, F, H*dh]
            out = FieldAttention.apply(q, k, v, self.heads, self.scale)  # [B, F, H*dh]
            return torch.relu(out + self.residual(x))  # [B, F, H*dh]
        # x: [B, F, d_in]. Heads as slices of the projection, not a reshape to [B, H, F, dh]:
        # the same products, but an exported graph without the shape arithmetic a
        # reshape of dynamic sizes needs, which costs more than the products on small
        # batches (the k items of /recommend).
        parts = self.qkv(x).split(self.d_head, dim=-1)  # 3*H x [B, F, dh]: q heads, k, v
        q, k, v = parts[: self.heads], parts[self.heads : 2 * self.heads], parts[2 * self.heads :]
        # Scores as [B, keys, queries], normalised over dim 1: PyTorch's CPU softmax over a
        # last axis as short as the field count is slow, over a middle axis much less so
        # (docs/SCALE.md, item 15).
        heads = [
            torch.softmax((k[h] @ q[h].transpose(-1, -2)) * self.scale, dim=1).transpose(-1, -2)
            @ v[h]  # [B, F, F] weights, queries first, times [B, F, dh]
            for h in range(self.heads)
        ]  # H x [B, F, dh]
        out = torch.cat(heads, dim=-1)  # [B, F, H*dh]
        return torch.relu(out + self.residual(x))  # [B, F, H*dh]


class FieldAttention(torch.autograd.Function):
    """The heads of an InteractingLayer as ONNX's own `Attention` op (opset 23), for export.

    Traced op by op, a layer's heads are 13 ONNX nodes (7 after onnxruntime's own fusions);
    on the k rows of a /recommend onnxruntime's per-node cost is a large part of the time,
    and its one fused kernel makes the teacher's rating graph faster
    (`python -m bench.rating_graph`, docs/BENCHMARKS.md). The eager forward is the same
    product written for batched heads; it only gives the tracer its output.
    """

    # Positional parameters: `Function.apply` passes its arguments only positionally.
    @staticmethod
    def forward(  # noqa: PLR0917
        ctx: Any, q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float
    ) -> Tensor:
        # q, k, v: [B, F, H*dh] with the heads side by side
        b, f, width = q.shape
        split = [t.reshape(b, f, heads, width // heads).transpose(1, 2) for t in (q, k, v)]
        weights = torch.softmax((split[0] @ split[1].transpose(-1, -2)) * scale, dim=-1)
        return (weights @ split[2]).transpose(1, 2).reshape(b, f, width)  # [B, F, H*dh]

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, heads: int, scale: float) -> Any:  # noqa: PLR0917
        out = g.op("Attention", q, k, v, q_num_heads_i=heads, kv_num_heads_i=heads, scale_f=scale)
        out.setType(q.type())
        return out


def attention_stack(d_in: int, *, layers: int, heads: int, d_head: int) -> nn.Sequential:
    """`layers` InteractingLayers: [B, F, d_in] -> [B, F, heads*d_head]."""
    blocks: list[nn.Module] = []
    for k in range(layers):
        width = d_in if k == 0 else heads * d_head
        blocks.append(InteractingLayer(width, heads=heads, d_head=d_head))
    return nn.Sequential(*blocks)


# Batches whose users x catalogue count matrix stays under this many entries (64 MiB in
# float32) sum their histories by a matrix product; larger ones by embedding_bag.
DENSE_HISTORY_MAX = 2**24


class UserHistory(nn.Module):
    """A user's training items as a ranking vector: |N(u)|^-alpha * sum_{j in N(u)} z_j.

    The implicit-feedback term of SVD++ (Koren, 2008), on the ranking side: a user is also
    the items they chose, which ties users with few ratings to what those items share.
    Training leaves the positive item out of its own user's sum (`exclude`): with it, an
    item would learn to recommend itself, the trivial solution EASE's zero diagonal rules
    out. The histories are buffers of the training run only (not in the state dict):
    `vectors` gives every user's term once training is over, to be folded into a table.
    """

    indptr: Tensor
    items: Tensor

    def __init__(
        self,
        item_vocab: int,
        dim: int,
        *,
        indptr: Tensor,
        items: Tensor,
        alpha: float = 0.5,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        self.table = nn.Embedding(item_vocab, dim)
        nn.init.normal_(self.table.weight, std=init_std)
        self.alpha = alpha
        # In training, at most this many items of each history per step (0: all of them);
        # set by training where histories are long and tables sparse (docs/SCALE.md item 31).
        self.sample = 0
        self.register_buffer("indptr", indptr.long(), persistent=False)
        self.register_buffer("items", items.long(), persistent=False)

    def forward(self, user: Tensor, exclude: Tensor | None = None) -> Tensor:
        return self._term(user, exclude, cap=self.sample if self.training else 0)  # [B, D]

    def _term(self, user: Tensor, exclude: Tensor | None, *, cap: int) -> Tensor:
        # A batch of training pairs repeats its heavy users (a user appears about as often
        # as they rated), and their histories are the long ones: summing each distinct
        # user's once saves most of that work (docs/SCALE.md, item 10).
        distinct, inverse = torch.unique(user, return_inverse=True)  # [U], [B]
        start = self.indptr[distinct]  # [U]
        length = self.indptr[distinct + 1] - start  # [U]
        flat, taken, offsets, weights = self._history_items(start, length, cap)
        total = self._bag_sums(flat, offsets, taken, weights)[inverse]  # [B, D]
        length = length[inverse]  # [B]
        count = length.to(total.dtype)
        if exclude is not None:
            # A user with a history holds every training positive of theirs in it.
            held = (length > 0).to(total.dtype)  # [B]
            total = total - self.table(exclude) * held[:, None]
            count = count - held
        return total * count.clamp(min=1.0).pow(-self.alpha)[:, None]  # [B, D]

    def _history_items(
        self, start: Tensor, length: Tensor, cap: int
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """The items each bag sums, as one flat run ([N]), the bag sizes and where each
        bag starts in the run ([U], [U]), and their weights ([N], None: all 1). With `cap`,
        a history longer than `cap` is `cap` uniform draws (with replacement) weighted
        length/cap: its sum in expectation."""
        taken = length.clamp(max=cap) if cap > 0 else length  # [U]
        offsets = torch.cumsum(taken, 0) - taken  # [U]
        within = torch.arange(int(taken.sum()), device=start.device)  # [N]
        within = within - torch.repeat_interleave(offsets, taken)
        weights = None
        longer = length > cap if cap > 0 else None  # [U]
        if longer is not None and bool(longer.any()):
            long = torch.repeat_interleave(longer, taken)  # [N]
            full = torch.repeat_interleave(length, taken)  # [N]
            # Drawn on the CPU and moved: one seed's draws are then the same on every device.
            draws = (torch.rand(within.shape[0]).to(start.device) * full).long().clamp(max=full - 1)
            within = torch.where(long, draws, within)
            scale = length.to(self.table.weight.dtype) / taken.clamp(min=1)  # [U]
            weights = torch.repeat_interleave(scale, taken)  # [N]
        flat = self.items[torch.repeat_interleave(start, taken) + within]  # [N]
        return flat, taken, offsets, weights

    def _bag_sums(
        self, flat: Tensor, offsets: Tensor, length: Tensor, weights: Tensor | None
    ) -> Tensor:
        """Sum of the (weighted) table rows of each bag: [U, D]."""
        weight = self.table.weight
        n_bags, n_rows = length.shape[0], weight.shape[0]
        if self.table.sparse or n_bags * n_rows > DENSE_HISTORY_MAX:
            return nn.functional.embedding_bag(
                flat,
                weight,
                offsets,
                mode="sum",
                sparse=self.table.sparse,
                per_sample_weights=weights,
            )  # [U, D]
        # embedding_bag's backward sorts every history item of the batch (hundreds of
        # thousands at ML-1M); the same sums as a [U, items] count matrix times the table
        # are two matrix products, which timed faster on ML-1M- and ml-100k-sized batches.
        bag = torch.repeat_interleave(torch.arange(n_bags, device=flat.device), length)
        counts = torch.zeros(n_bags, n_rows, dtype=weight.dtype, device=flat.device)
        ones = torch.ones((), dtype=weight.dtype, device=flat.device)
        counts.index_put_((bag, flat), ones if weights is None else weights, accumulate=True)
        return counts @ weight  # [U, D]

    @torch.no_grad()
    def vectors(self, n_rows: int, *, chunk: int = 65_536) -> Tensor:
        """The term of every user index 0..n_rows-1: [n_rows, D]."""
        users = torch.arange(n_rows, device=self.indptr.device)
        parts = [self._term(users[s : s + chunk], None, cap=0) for s in range(0, n_rows, chunk)]
        return torch.cat(parts)


class TowerScoring(TwoHeadModel):
    """A TwoHeadModel whose ranking score is the dot product of a user and an item tower.

    `tower_prefixes` names the parameters only the ranking towers use; every other
    parameter belongs to the rating head. Keeping the two disjoint lets training stop each
    head at its own best epoch.
    """

    tower_prefixes: tuple[str, ...] = ()

    def train_user_tower(self, user: Tensor, user_feats: Tensor, item: Tensor) -> Tensor:
        """The user tower for the training pairs (user, item): [B, D]. A model whose user
        tower reads the user's training items leaves `item` out of them here."""
        return self.user_tower(user, user_feats)

    def fold_history(self) -> None:
        """Once training is over: moves any term of the users' training items into the
        model's tables, so that the towers no longer read the histories (none here)."""

    def rating_head(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        """The rating head alone: 'rating' [B] (unclipped), and 'repr' [B, D] where the
        model has one. Training fits it without running the towers a second time."""
        raise NotImplementedError

    def heads(
        self,
        user: Tensor,  # [B]
        item: Tensor,  # [B]
        user_feats: Tensor,  # [B, Fu]
        item_feats: Tensor,  # [B, Fi]
        item_genres: Tensor,  # [B, G]
    ) -> dict[str, Tensor]:
        args = (user, item, user_feats, item_feats, item_genres)
        return {**self.rating_head(*args), "score": self.tower_score(*args)}  # [B] each

    def rating_fit(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """(rating [B], L2 penalty [B]) of a training batch; a model whose head and
        penalty share work overrides it to do that work once."""
        args = (user, item, user_feats, item_feats, item_genres)
        return self.rating_head(*args)["rating"], self.regularizer(*args)

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
        return self.user_vectors(users, tables) @ self.catalogue_vectors(tables).T

    def user_vectors(self, users: np.ndarray, tables: FeatureTables) -> Tensor:
        """The user tower of `users`: [len(users), D]."""
        dev = model_device(self)
        user = torch.as_tensor(users, dtype=torch.long, device=dev)
        return self.user_tower(user, torch.as_tensor(tables.user_feats[users], device=dev))

    def catalogue_vectors(self, tables: FeatureTables) -> Tensor:
        """The item tower of every item index 0..n_items: [n_items + 1, D]."""
        dev = model_device(self)
        return self.item_tower(
            torch.arange(tables.item_feats.shape[0], device=dev),
            torch.as_tensor(tables.item_feats, device=dev),
            torch.as_tensor(tables.item_genres, device=dev),
        )

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
