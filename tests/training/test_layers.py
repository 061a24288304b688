"""The shared layers of training/models/layers.py: shapes, maths and parameter names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from training.features import FeatureMap, FeatureTables, FieldSpec
from training.models import layers
from training.models.layers import (
    CIN,
    FieldEmbedding,
    InteractingLayer,
    TowerScoring,
    UserHistory,
    attention_stack,
    mlp,
)

B, D = 5, 4


def feature_map() -> FeatureMap:
    return FeatureMap(
        n_users=9,
        n_items=11,
        user_fields=(
            FieldSpec("gender", "categorical", ("F", "M")),
            FieldSpec("age", "bucket", edges=(18.0, 30.0)),
        ),
        item_fields=(FieldSpec("year", "bucket", edges=(1980.0,)),),
        genres=("a", "b", "c"),
    )


def pair_inputs(fm: FeatureMap, n: int = B, seed: int = 0) -> tuple[Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, fm.user_vocab, (n,), generator=g),
        torch.randint(0, fm.item_vocab, (n,), generator=g),
        torch.stack([torch.randint(0, v, (n,), generator=g) for v in fm.user_field_vocabs], 1),
        torch.stack([torch.randint(0, v, (n,), generator=g) for v in fm.item_field_vocabs], 1),
        (torch.rand(n, fm.n_genres, generator=g) < 0.5).float(),
    )


def test_field_embedding_shapes_and_field_count() -> None:
    fm = feature_map()
    embed = FieldEmbedding(fm, D)
    user, item, user_feats, item_feats, genres = pair_inputs(fm)
    n_user, n_item = 1 + len(fm.user_field_vocabs), 2 + len(fm.item_field_vocabs)
    assert (embed.n_user_fields, embed.n_item_fields) == (n_user, n_item)
    assert embed.user_side(user, user_feats).shape == (B, n_user, D)
    assert embed.item_side(item, item_feats, genres).shape == (B, n_item, D)
    assert embed(user, item, user_feats, item_feats, genres).shape == (B, embed.n_fields, D)
    assert embed.squared_norm(user, item, user_feats, item_feats, genres).shape == (B,)


def test_field_embedding_gives_each_field_its_own_rows_and_a_mean_genre_bag() -> None:
    fm = feature_map()
    embed = FieldEmbedding(fm, D, init_std=1.0)
    zeros_u = torch.zeros(1, len(fm.user_field_vocabs), dtype=torch.long)
    side = embed.user_side(torch.tensor([1]), zeros_u)[0]  # [1+Fu, D]
    # Index 0 of every field is a different row of the shared table.
    assert len({tuple(row.tolist()) for row in side[1:]}) == len(fm.user_field_vocabs)
    assert torch.equal(side[0], embed.table.weight[1])
    genres = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    zeros_i = torch.zeros(2, len(fm.item_field_vocabs), dtype=torch.long)
    bag = embed.item_side(torch.tensor([1, 2]), zeros_i, genres)[:, -1]  # [2, D]
    torch.testing.assert_close(bag[0], (embed.genre[0] + embed.genre[2]) / 2)
    assert torch.equal(bag[1], torch.zeros(D))  # no genre: the empty bag, not a NaN


def test_field_embedding_forward_is_both_sides_in_one_gather() -> None:
    # forward reads user and item fields with one gather (fewer nodes in the rating graphs);
    # it must embed a pair exactly as the towers' user_side and item_side do.
    fm = feature_map()
    embed = FieldEmbedding(fm, D, init_std=1.0)
    user, item, user_feats, item_feats, genres = pair_inputs(fm)
    sides = torch.cat(
        [embed.user_side(user, user_feats), embed.item_side(item, item_feats, genres)], dim=1
    )
    torch.testing.assert_close(embed(user, item, user_feats, item_feats, genres), sides)


def test_mlp_layout_names_and_activations() -> None:
    net = mlp([6, 8, 3, 2], dropout=0.1)
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    # Checkpoints name these indices: the layout is part of the state dict.
    assert list(net.state_dict()) == [
        "0.weight",
        "0.bias",
        "3.weight",
        "3.bias",
        "6.weight",
        "6.bias",
    ]
    assert net(torch.randn(B, 6)).shape == (B, 2)
    assert [type(m) for m in mlp([6, 8])] == [nn.Linear]
    positive = mlp([6, 8], last_activation=True)
    assert bool((positive(torch.randn(50, 6)) >= 0).all())


def test_cin_matches_its_definition() -> None:
    torch.manual_seed(0)
    n_fields, sizes = 3, (4, 2)
    cin = CIN(n_fields, sizes, dim=D)
    x0 = torch.randn(B, n_fields, D)
    out = cin(x0)
    assert cin.out_dim == sum(sizes)
    assert out.shape == (B, sum(sizes))
    # x^k_h = relu(sum_ij W^k[h, i, j] * x^{k-1}_i * x^0_j + b^k_h), pooled over d.
    xk, pooled = x0, []
    for conv in cin.convs:
        assert isinstance(conv, nn.Conv1d)
        w = conv.weight.squeeze(2).reshape(conv.out_channels, xk.shape[1], n_fields)
        assert conv.bias is not None
        z = torch.einsum("hij,bid,bjd->bhd", w, xk, x0) + conv.bias[None, :, None]
        xk = torch.relu(z)
        pooled.append(xk.sum(dim=2))
    torch.testing.assert_close(out, torch.cat(pooled, dim=1))


def test_interacting_layer_is_multi_head_attention_with_a_residual() -> None:
    torch.manual_seed(0)
    heads, d_head, n_fields = 2, 3, 5
    layer = InteractingLayer(D, heads=heads, d_head=d_head)
    x = torch.randn(B, n_fields, D)
    out = layer(x)
    assert out.shape == (B, n_fields, heads * d_head)
    q, k, v = layer.qkv(x).chunk(3, dim=-1)  # [B, F, H*dh] each
    parts = []
    for h in range(heads):
        cols = slice(h * d_head, (h + 1) * d_head)
        att = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / d_head**0.5, dim=-1)
        parts.append(att @ v[..., cols])
    expected = torch.relu(torch.cat(parts, dim=-1) + layer.residual(x))
    torch.testing.assert_close(out, expected)
    # No positional information: permuting the fields permutes the output.
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(layer(x[:, perm]), out[:, perm])


def test_attention_stack_widths_and_names() -> None:
    stack = attention_stack(D, layers=3, heads=2, d_head=3)
    assert len(stack) == 3
    assert [m.qkv.in_features for m in stack] == [D, 6, 6]  # type: ignore[union-attr]
    assert stack(torch.randn(B, 7, D)).shape == (B, 7, 6)
    assert list(stack.state_dict()) == [
        f"{i}.{name}.weight" for i in range(3) for name in ("qkv", "residual")
    ]


class _EmbeddingTowers(TowerScoring):
    """The smallest two-tower model: one embedding per user and per item."""

    def __init__(self, fm: FeatureMap) -> None:
        super().__init__()
        self.tower_prefixes = ("users.", "items.")
        self.users = nn.Embedding(fm.user_vocab, D)
        self.items = nn.Embedding(fm.item_vocab, D)

    def user_tower(self, user: Tensor, user_feats: Tensor) -> Tensor:
        return self.users(user)

    def item_tower(self, item: Tensor, item_feats: Tensor, item_genres: Tensor) -> Tensor:
        return self.items(item)

    def heads(
        self,
        user: Tensor,
        item: Tensor,
        user_feats: Tensor,
        item_feats: Tensor,
        item_genres: Tensor,
    ) -> dict[str, Tensor]:
        score = self.tower_score(user, item, user_feats, item_feats, item_genres)
        return {"rating": torch.full_like(score, 9.0), "score": score}


def test_tower_scoring_scores_pairs_and_the_catalogue_alike() -> None:
    fm = feature_map()
    torch.manual_seed(0)
    model = _EmbeddingTowers(fm)
    n_rows = fm.item_vocab
    tables = FeatureTables(
        user_feats=np.zeros((fm.user_vocab, len(fm.user_field_vocabs)), dtype=np.int64),
        item_feats=np.zeros((n_rows, len(fm.item_field_vocabs)), dtype=np.int64),
        item_genres=np.zeros((n_rows, fm.n_genres), dtype=np.float32),
    )
    user, item, user_feats, item_feats, genres = pair_inputs(fm)
    with torch.no_grad():
        rating, score = model(user, item, user_feats, item_feats, genres)
        matrix = model.score_matrix(user.numpy(), tables)
    assert torch.equal(rating, torch.full((B,), 5.0))  # forward clips the rating to [1, 5]
    assert matrix.shape == (B, n_rows)
    torch.testing.assert_close(matrix[torch.arange(B), item], score)
    with pytest.raises(NotImplementedError):
        TowerScoring().regularizer(user, item, user_feats, item_feats, genres)


def _history() -> tuple[UserHistory, list[list[int]]]:
    rows = [[], [2, 5, 7], [], [1], [3, 4, 6, 7, 9]]  # users 0..4; 0 and 2 have no history
    indptr = torch.tensor(np.cumsum([0, *map(len, rows)]))
    items = torch.tensor([i for row in rows for i in row])
    torch.manual_seed(0)
    return UserHistory(10, D, indptr=indptr, items=items, alpha=0.5), rows


def test_user_history_is_the_scaled_sum_of_the_users_items() -> None:
    history, rows = _history()
    z = history.table.weight.detach()
    users = torch.tensor([4, 0, 1, 3, 2, 1])
    got = history(users)  # [6, D]
    for row, u in enumerate(users.tolist()):
        items = rows[u]
        want = z[items].sum(0) / np.sqrt(len(items)) if items else torch.zeros(D)
        torch.testing.assert_close(got[row], want)


def test_user_history_leaves_the_training_positive_out() -> None:
    history, rows = _history()
    z = history.table.weight.detach()
    # User 1 twice, with a different positive each time: each pair leaves out its own.
    users, positives = torch.tensor([1, 4, 3, 0, 1]), torch.tensor([5, 9, 1, 8, 2])
    got = history(users, exclude=positives)
    for row, (u, i) in enumerate(zip(users.tolist(), positives.tolist(), strict=True)):
        rest = [j for j in rows[u] if j != i] if rows[u] else []
        want = z[rest].sum(0) / np.sqrt(max(len(rest), 1)) if rest else torch.zeros(D)
        # User 0 has no history (an id dropped to the unknown user): nothing to leave out.
        torch.testing.assert_close(got[row], want)
    assert torch.equal(history.vectors(5), history(torch.arange(5)))


def test_user_history_gradients_reach_only_the_items_used() -> None:
    history, _ = _history()
    history(torch.tensor([1]), exclude=torch.tensor([5])).sum().backward()
    grad = history.table.weight.grad
    assert grad is not None
    # The positive's own row (5) gets +1 through the sum and -1 through the exclusion.
    assert set(torch.nonzero(grad.abs().sum(1)).ravel().tolist()) == {2, 7}
    assert "table.weight" in dict(history.named_parameters())
    assert set(history.state_dict()) == {"table.weight"}  # histories are not checkpointed


@pytest.mark.parametrize("sample", [0, 2])  # whole histories; two draws of each long one
def test_user_history_sums_alike_by_matrix_product_and_by_embedding_bag(
    monkeypatch: pytest.MonkeyPatch, sample: int
) -> None:
    users, positives = torch.tensor([1, 4, 3, 0, 1, 2]), torch.tensor([5, 9, 1, 8, 2, 3])
    results = []
    for limit in (layers.DENSE_HISTORY_MAX, 0):  # the product, then embedding_bag
        monkeypatch.setattr(layers, "DENSE_HISTORY_MAX", limit)
        history, _ = _history()
        history.sample = sample
        torch.manual_seed(3)  # the same draws for both
        out = history(users, exclude=positives)
        out.pow(2).sum().backward()
        assert history.table.weight.grad is not None
        results.append((out.detach(), history.table.weight.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_a_sampled_history_sums_the_whole_history_in_expectation() -> None:
    history, rows = _history()
    z = history.table.weight.detach()
    history.sample = 2  # user 4's five items and user 1's three are sampled; user 3's one is not
    users = torch.tensor([4, 1, 3, 0])
    exact = history.eval()(users)
    history.train()
    torch.manual_seed(1)
    draws = torch.stack([history(users).detach() for _ in range(500)])  # [500, 4, D]
    # Short histories and empty ones are summed whole on every draw.
    assert torch.equal(draws[:, 2], exact[2].expand(500, -1))
    assert not draws[:, 3].any()
    # Long ones: two items weighted length/2, scaled by the whole length's |N(u)|^-alpha.
    assert not torch.equal(draws[0, 0], draws[1, 0])
    first = draws[0, 0] * np.sqrt(5) / (5 / 2)
    assert any(torch.allclose(first, z[a] + z[b]) for a in rows[4] for b in rows[4])
    spread = draws[:, :2].std(0) / np.sqrt(500)
    assert bool(((draws[:, :2].mean(0) - exact[:2]).abs() < 5 * spread + 1e-6).all())
    # Evaluation and the towers folded for export never sample.
    assert torch.equal(history.vectors(5), history.eval()(torch.arange(5)))
