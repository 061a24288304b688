"""Fisher estimates on tiny models against brute-force per-example autograd loops."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from tests.training.test_student import SMALL, feature_map, inputs
from training.fisher import (
    diagonal_fisher,
    group_fisher,
    layer_sensitivity,
    per_example_grads_loop,
    per_example_grads_vmap,
    unit_importance_diag,
)
from training.heads import HeadsFn, run_heads
from training.losses import ranking_loss, rating_loss
from training.models.base import TwoHeadModel
from training.models.student import Student


def lists(n: int, length: int, seed: int = 0) -> dict[str, Tensor]:
    fm = feature_map()
    user, item, uf, itf, genres = inputs(fm, n * length, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    rating = torch.randint(1, 6, (n, length), generator=g).float()
    return {
        "user": user.reshape(n, length),
        "item": item.reshape(n, length),
        "user_feats": uf.reshape(n, length, -1),
        "item_feats": itf.reshape(n, length, -1),
        "item_genres": genres.reshape(n, length, -1),
        "rating": rating,
        "rated": torch.rand(n, length, generator=g) < 0.7,
    }


def loss_fn(heads: HeadsFn, ex: Mapping[str, Tensor]) -> Tensor:
    out = run_heads(heads, ex)
    return rating_loss(out["rating"], ex["rating"], ex["rated"]) + ranking_loss(
        out["score"], ex["rating"], ex["rated"]
    )


def brute_force_fisher(model: nn.Module, ex: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mean_n (d loss_n / d theta)^2 with one autograd.grad call per example."""
    names, params = zip(*model.named_parameters(), strict=True)
    n = ex["user"].shape[0]
    total = [torch.zeros_like(p) for p in params]
    for row in range(n):
        one = {k: v[row : row + 1] for k, v in ex.items()}
        loss = loss_fn(model.heads, one).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t.add_(g.pow(2))
    return {k: t / n for k, t in zip(names, total, strict=True)}


def tiny_student(seed: int = 0) -> Student:
    torch.manual_seed(seed)
    model = Student(feature_map(), shape=SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_diagonal_fisher_matches_brute_force() -> None:
    model = tiny_student()
    ex = lists(10, 5)
    want = brute_force_fisher(model, ex)
    for use_vmap in (True, False):
        got = diagonal_fisher(model, loss_fn, [ex], chunk=3, use_vmap=use_vmap)
        assert set(got) == set(want)
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-7)
    # The estimate is not the squared mean gradient: per-example squares differ from it.
    mean_grad = torch.autograd.grad(loss_fn(model.heads, ex).mean(), [model.user.hidden.weight])[0]
    assert float(want["user.hidden.weight"].sum()) > float(mean_grad.pow(2).sum()) * 1.01


def test_vmap_and_loop_per_example_gradients_agree() -> None:
    model = tiny_student(1)
    ex = lists(4, 3, seed=2)
    a = per_example_grads_vmap(model, loss_fn, ex)
    b = per_example_grads_loop(model, loss_fn, ex)
    for k in b:
        assert a[k].shape == (4, *dict(model.named_parameters())[k].shape)
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-7)


def test_group_fisher_matches_brute_force_gradient_times_weight() -> None:
    """0.5 * mean_n (sum over the unit of g * theta)^2, with the unit's output-side weights."""
    model = tiny_student(2)
    ex = lists(8, 4, seed=5)
    got = group_fisher(model, loss_fn, [ex], units=model.unit_counts())
    n = ex["user"].shape[0]
    params = {
        "user_hidden": [model.user.rating_out.weight],
        "rating_factor": [model.user.rating_out.weight, model.user.rating_out.bias],
        "score_factor": [model.user.score_out.weight, model.user.score_out.bias],
    }
    for kind, tensors in params.items():
        per_example = torch.zeros(n, model.unit_counts()[kind])
        for row in range(n):
            one = {k: v[row : row + 1] for k, v in ex.items()}
            grads = torch.autograd.grad(loss_fn(model.heads, one).sum(), tensors)
            h = model.user.hidden.out_features
            for g, p in zip(grads, tensors, strict=True):
                gp = (g * p).detach()
                if kind == "user_hidden":
                    per_example[row] += gp[:, :h].sum(dim=0)  # column j feeds from neuron j
                elif gp.dim() == 2:
                    per_example[row] += gp.sum(dim=1)  # row k makes factor k
                else:
                    per_example[row] += gp
        want = 0.5 * per_example.pow(2).mean(dim=0)
        torch.testing.assert_close(got[kind], want, rtol=1e-4, atol=1e-8)
    # Embedding dimensions: gate at the summed embedding = sum of g * theta over the tables.
    assert got["user_score_dim"].shape == (SMALL.user_score_dim,)
    assert got["user_rating_dim"].shape == (SMALL.user_rating_dim,)
    assert bool((got["item_score_dim"] > 0).all())
    assert bool((got["item_rating_dim"] > 0).all())


def test_layer_sensitivity_and_units_aggregate_the_diagonal() -> None:
    model = tiny_student(3)
    ex = lists(6, 4, seed=7)
    fisher = diagonal_fisher(model, loss_fn, [ex])
    rows = layer_sensitivity(model, fisher)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    hidden = next(r for r in rows if r.layer == "user.hidden")
    want = float(fisher["user.hidden.weight"].sum() + fisher["user.hidden.bias"].sum())
    assert abs(hidden.fisher_trace - want) < 1e-6 * max(want, 1.0)
    w, b = model.user.hidden.weight.detach(), model.user.hidden.bias.detach()
    removal = 0.5 * float(
        (fisher["user.hidden.weight"] * w**2).sum() + (fisher["user.hidden.bias"] * b**2).sum()
    )
    assert abs(hidden.removal - removal) < 1e-6 * max(removal, 1.0)
    units = unit_importance_diag(model, fisher)
    neuron = units["user.hidden"]["neuron"]
    assert neuron.shape == (SMALL.user_hidden,)
    assert abs(float(neuron.sum()) - removal) < 1e-5 * max(removal, 1.0)
    assert units["user.tables.0"]["embedding_dim"].shape == (SMALL.user_dim,)


class TinyAttention(TwoHeadModel):
    """A one-layer, two-head attention model with a Conv1d map: every generic unit kind."""

    def __init__(self) -> None:
        super().__init__()
        fm = feature_map()
        self.emb = nn.Embedding(fm.user_vocab + fm.item_vocab, 4)
        self.n_heads = 2
        self.qkv = nn.Linear(4, 3 * 2 * 3, bias=False)
        self.conv = nn.Conv1d(2, 5, kernel_size=1)
        self.out = nn.Linear(5 * 6, 1)

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
        **_: object,
    ) -> dict[str, Tensor]:
        x = torch.stack([self.emb(user), self.emb(item + 10)], dim=1)  # [B, 2, 4]
        q, k, v = self.qkv(x).reshape(-1, 2, 3, 2, 3).unbind(2)  # [B, 2, H, 3] each
        att = torch.softmax(torch.einsum("bfhd,bghd->bhfg", q, k), dim=-1)  # [B, H, 2, 2]
        z = torch.einsum("bhfg,bghd->bfhd", att, v).reshape(-1, 2, 6)  # [B, 2, 6]
        y = self.out(torch.relu(self.conv(z)).flatten(1)).squeeze(1)  # [B]
        return {"rating": 3.0 + y, "score": y}


def test_unit_importance_covers_heads_maps_neurons_and_dims() -> None:
    torch.manual_seed(0)
    model = TinyAttention()
    ex = lists(6, 3, seed=9)
    fisher = diagonal_fisher(model, loss_fn, [ex], chunk=2)
    want = brute_force_fisher(model, ex)
    for k in want:
        torch.testing.assert_close(fisher[k], want[k], rtol=1e-4, atol=1e-8)
    units = unit_importance_diag(model, fisher)
    assert units["emb"]["embedding_dim"].shape == (4,)
    assert units["conv"]["feature_map"].shape == (5,)
    assert units["out"]["neuron"].shape == (1,)
    heads = units[""]["attention_head"]
    qkv = (0.5 * fisher["qkv.weight"] * model.qkv.weight.detach() ** 2).reshape(3, 2, 3, 4)
    torch.testing.assert_close(heads, qkv.sum(dim=(0, 2, 3)))
