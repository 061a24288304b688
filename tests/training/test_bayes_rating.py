"""The Gibbs-sampled rating head: its conditionals, its compression, and a planted model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from tests.datagen import write_ml100k
from training.bayes_rating import (
    BAYES_MAX_ITEMS,
    GibbsSettings,
    Incidence,
    Layout,
    MeanSketch,
    RatingChain,
    draw_rows,
    fit_rating_head,
    gram_stats,
    hyper_draw,
    posterior_draw,
)
from training.data import Dataset, Ratings, load_dataset
from training.models.mf import BiasedMF
from training.train import MFConfig, XDeepFMConfig, bayes_settings, train_component

F64 = torch.float64


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    root = tmp_path_factory.mktemp("bayes")
    return load_dataset(write_ml100k(root, n_users=60, n_items=50, n_ratings=1500, seed=3))


def test_posterior_draws_have_the_conditional_mean_and_covariance() -> None:
    torch.manual_seed(0)
    k, n = 3, 40000
    x = torch.randn(30, k, dtype=F64)
    y = torch.randn(30, dtype=F64)
    prior_mean = torch.tensor([0.5, -1.0, 0.0], dtype=F64)
    prior_prec = torch.diag(torch.tensor([2.0, 1.0, 4.0], dtype=F64))
    noise = 3.0
    gram = (x.T @ x).expand(n, k, k)
    rhs = (x.T @ y).expand(n, k)
    draws = posterior_draw(gram, rhs, prior_mean, prior_prec, noise)  # n draws of one row
    prec = prior_prec + noise * x.T @ x
    mean = torch.linalg.solve(prec, prior_prec @ prior_mean + noise * x.T @ y)
    torch.testing.assert_close(draws.mean(dim=0), mean, atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), torch.linalg.inv(prec), atol=3e-3, rtol=0)


def test_hyper_draws_concentrate_on_the_rows_mean_and_precision() -> None:
    torch.manual_seed(0)
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]], dtype=F64)
    mean = torch.tensor([2.0, -1.0], dtype=F64)
    rows = mean + torch.randn(50000, 2, dtype=F64) @ torch.linalg.cholesky(cov).T
    drawn_mean, drawn_prec = hyper_draw(rows)
    torch.testing.assert_close(drawn_mean, mean, atol=0.03, rtol=0)
    torch.testing.assert_close(drawn_prec, torch.linalg.inv(cov), atol=0, rtol=0.05)
    empty_mean, empty_prec = hyper_draw(rows[:0])
    assert torch.equal(empty_mean, torch.zeros(2, dtype=F64))
    assert torch.equal(empty_prec, torch.eye(2, dtype=F64))


def test_the_sketch_recovers_a_mean_of_low_rank() -> None:
    torch.manual_seed(0)
    n_a, n_b, rank = 120, 90, 6
    basis = torch.randn(n_a, rank, dtype=F64)
    sketch = MeanSketch(n_a, n_b, rank, device=torch.device("cpu"))
    total = torch.zeros(n_a, n_b, dtype=F64)
    for _ in range(25):
        # Every draw lies in one rank-6 column space, so their mean has rank 6.
        a = basis @ torch.randn(rank, 4, dtype=F64)
        b = torch.randn(n_b, 4, dtype=F64)
        sketch.add(a, b)
        total += a @ b.T
    p, q = sketch.factors(8)
    assert p.shape == (n_a, 8) and q.shape == (n_b, 8)
    torch.testing.assert_close(p @ q.T, total / 25, atol=1e-8, rtol=0)


def test_the_layout_sums_the_rows_field_embedding_sums(dataset: Dataset) -> None:
    torch.manual_seed(0)
    model = BiasedMF(dataset.feature_map, dim=4, score_dim=4)
    tables = dataset.tables
    uf, itf = torch.as_tensor(tables.user_feats), torch.as_tensor(tables.item_feats)
    genres = torch.as_tensor(tables.item_genres)
    layout = Layout.build(model.factors, uf, itf, genres)
    weight = model.factors.table.weight.detach().double()
    users, items = torch.arange(uf.shape[0]), torch.arange(itf.shape[0])
    with torch.no_grad():
        p = model.factors.user_side(users, uf).sum(dim=1).double()
        q = model.factors.item_side(items, itf, genres).sum(dim=1).double()
    torch.testing.assert_close(weight[layout.user_rows].sum(dim=1), p)
    genre_rows = model.factors.genre.detach().double()
    single = weight[layout.item_rows].sum(dim=1)
    torch.testing.assert_close(single + layout.genre_weights @ genre_rows, q)
    assert int(layout.user_rows.max()) < layout.n_user_rows <= int(layout.item_rows.min())


def test_schedule_bounds_the_sweeps_by_the_ratings_visited() -> None:
    settings = GibbsSettings(sweeps=400, min_sweeps=40, max_visits=4e7, burn_in=0.2)
    assert settings.schedule(90_000) == (400, 80)
    assert settings.schedule(1_000_000) == (40, 8)
    assert settings.schedule(100_000_000) == (40, 8)
    assert GibbsSettings(sweeps=20).schedule(1000) == (20, 4)


def _planted(dataset: Dataset, seed: int) -> tuple[Ratings, Ratings, float]:
    """Ratings from a rank-2 model with biases and noise 0.3 on 60% of the pairs, split
    80/20; returns both parts and the noise's spread."""
    rng = np.random.default_rng(seed)
    n_users, n_items = dataset.feature_map.n_users, dataset.feature_map.n_items
    p = rng.normal(0, 0.7, (n_users + 1, 2))
    q = rng.normal(0, 0.7, (n_items + 1, 2))
    bu, bi = rng.normal(0, 0.4, n_users + 1), rng.normal(0, 0.4, n_items + 1)
    users, items = np.meshgrid(np.arange(1, n_users + 1), np.arange(1, n_items + 1))
    users, items = users.ravel(), items.ravel()
    keep = rng.random(users.size) < 0.6
    users, items = users[keep], items[keep]
    rating = 3.5 + bu[users] + bi[items] + (p[users] * q[items]).sum(1)
    rating = rating + rng.normal(0, 0.3, users.size)
    ratings = Ratings(
        user=users.astype(np.int64),
        item=items.astype(np.int64),
        rating=rating.astype(np.float32),
        timestamp=np.zeros(users.size, np.int64),
    )
    test = rng.random(users.size) < 0.2
    return ratings.subset(~test), ratings.subset(test), 0.3


def _rating(model: BiasedMF, dataset: Dataset, ratings: Ratings) -> torch.Tensor:
    tables = dataset.tables
    u, i = torch.as_tensor(ratings.user), torch.as_tensor(ratings.item)
    with torch.no_grad():
        out = model.rating_head(
            u,
            i,
            torch.as_tensor(tables.user_feats)[u],
            torch.as_tensor(tables.item_feats)[i],
            torch.as_tensor(tables.item_genres)[i],
        )
    return out["rating"].double()


def test_the_sampled_head_recovers_a_planted_model(dataset: Dataset) -> None:
    train, test, noise = _planted(dataset, seed=1)
    torch.manual_seed(0)
    mean = float(train.rating.mean())
    model = BiasedMF(dataset.feature_map, dim=8, score_dim=4, global_mean=mean)
    tables = dataset.tables
    figures = fit_rating_head(
        model,
        users=torch.as_tensor(train.user),
        items=torch.as_tensor(train.item),
        ratings=torch.as_tensor(train.rating),
        tables=tuple(
            torch.as_tensor(t) for t in (tables.user_feats, tables.item_feats, tables.item_genres)
        ),
        settings=GibbsSettings(dim=4, sweeps=120),
    )
    truth = torch.as_tensor(test.rating).double()
    rmse = float((_rating(model, dataset, test) - truth).pow(2).mean().sqrt())
    spread = float(truth.std())
    # Near the noise, far below the ratings' own spread (what the mean alone would miss by).
    assert rmse < 1.5 * noise, rmse
    assert rmse < 0.5 * spread, (rmse, spread)
    assert figures["sweeps"] == 120 and figures["burn_in"] == 24
    assert 0.2 < figures["noise_std"] < 0.4
    # The head written into the model predicts the training ratings as the averaged draws
    # did, up to the compression to the model's dimension.
    fitted = _rating(model, dataset, train) - torch.as_tensor(train.rating).double()
    written_rmse = float(fitted.pow(2).mean().sqrt())
    assert abs(written_rmse - figures["train_rmse"]) <= figures["compression_rmse"] + 1e-6
    assert figures["compression_rmse"] < 0.05


def test_gram_stats_sum_each_entitys_outer_products_over_its_ratings() -> None:
    gen = torch.Generator().manual_seed(5)
    n, n_other, k = 7, 5, 3
    # Entity 6 has no ratings; the pair (2, 1) is rated twice (both count).
    index = torch.tensor([0, 2, 2, 2, 5, 1, 3, 0, 4, 5, 1])
    other = torch.tensor([1, 1, 1, 4, 0, 3, 2, 4, 0, 2, 2])
    x = torch.randn(n_other, k, generator=gen, dtype=F64)
    y = torch.randn(index.numel(), generator=gen, dtype=F64)
    incidence = Incidence(index, other)
    gram, rhs = gram_stats(incidence, x, y)
    want_gram = torch.zeros(n, k, k, dtype=F64)
    want_rhs = torch.zeros(n, k, dtype=F64)
    for e, o, t in zip(index.tolist(), other.tolist(), y.tolist(), strict=True):
        want_gram[e] += torch.outer(x[o], x[o])
        want_rhs[e] += t * x[o]
    # Only the entities with ratings get sums, from the other side's entities rated.
    assert incidence.rows.tolist() == [0, 1, 2, 3, 4, 5]
    assert incidence.cols.tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(gram, want_gram[:6], atol=1e-12, rtol=0)
    torch.testing.assert_close(rhs, want_rhs[:6], atol=1e-12, rtol=0)
    sparse = Incidence(index, other + 10)  # other-side entities 0-9 unrated
    assert sparse.rows.tolist() == [0, 1, 2, 3, 4, 5]
    assert sparse.cols.tolist() == [10, 11, 12, 13, 14]
    wide = torch.cat([torch.zeros(10, k, dtype=F64), x, torch.zeros(2, k, dtype=F64)])
    assert torch.equal(gram_stats(sparse, wide, y)[0], gram)


def test_rows_without_ratings_are_drawn_from_the_prior_as_over_every_row() -> None:
    """`draw_rows` over the rated rows draws what `posterior_draw` over every row draws
    with zero statistics for the others: the same random numbers, bit for bit."""
    gen = torch.Generator().manual_seed(3)
    size, k = 9, 4
    used = torch.tensor([1, 2, 6])
    x = torch.randn(len(used), 6, k, generator=gen, dtype=F64)
    gram = x.mT @ x  # [U, k, k]
    rhs = torch.randn(len(used), k, generator=gen, dtype=F64)
    mean, precision = torch.randn(k, generator=gen, dtype=F64), torch.eye(k, dtype=F64) * 2.0
    full_gram = torch.zeros(size, k, k, dtype=F64).index_copy_(0, used, gram)
    full_rhs = torch.zeros(size, k, dtype=F64).index_copy_(0, used, rhs)
    torch.manual_seed(11)
    want = posterior_draw(full_gram, full_rhs, mean, precision, 1.5)
    torch.manual_seed(11)
    got = draw_rows(gram, rhs, used, size, mean=mean, precision=precision, noise=1.5)
    assert torch.equal(got, want)


def _genres_one_at_a_time(
    chain: RatingChain, side: torch.Tensor, gram: torch.Tensor, rhs: torch.Tensor
) -> None:
    """The genre draw by its definition: each genre's sums over its own items' Gram
    matrices and current side vectors, the side moved after every draw."""
    weights, genres = chain.layout.genre_weights, chain.state.genres
    used = ((weights > 0) & (chain.item_count > 0).unsqueeze(1)).any(dim=0)
    mean, precision = hyper_draw(genres[used])
    for g in range(genres.shape[0]):
        idx = torch.nonzero(weights[:, g] > 0).squeeze(1)
        w = weights[idx, g].unsqueeze(1)  # [M, 1]
        old = genres[g].clone()
        rest = side[idx] - w * old
        gsum = (w.unsqueeze(2).pow(2) * gram[idx]).sum(dim=0)
        fit = rhs[idx] - (gram[idx] @ rest.unsqueeze(2)).squeeze(2)
        new = posterior_draw(
            gsum[None], (w * fit).sum(dim=0)[None], mean, precision, chain.state.noise
        )[0]
        genres[g] = new
        side[idx] += w * (new - old)


def test_genre_draws_equal_drawing_each_genre_from_its_own_items(dataset: Dataset) -> None:
    torch.manual_seed(0)
    model = BiasedMF(dataset.feature_map, dim=8, score_dim=4, global_mean=3.5)
    tables = dataset.tables
    feats = [torch.as_tensor(t) for t in (tables.user_feats, tables.item_feats)]
    genres = torch.as_tensor(tables.item_genres)
    # Bags of several genres (they share ratings) and rows with none (the padding row).
    assert (genres.sum(dim=1) > 1).any() and (genres.sum(dim=1) == 0).any()
    layout = Layout.build(model.factors, *feats, genres)
    ratings = dataset.ratings
    chain = RatingChain(
        layout,
        torch.as_tensor(ratings.user),
        torch.as_tensor(ratings.item),
        torch.as_tensor(ratings.rating).double() - 3.5,
        dim=4,
        n_rows=model.factors.table.num_embeddings,
    )
    chain.sweep()  # a state away from the start
    gram, rhs = gram_stats(chain.by_item, *chain._features(chain.user_side(), chain.users))
    start, side = chain.state.genres.clone(), chain.item_side()
    # The definition sums over every item of a genre: unrated ones have zero statistics.
    rated = chain.by_item.rows
    assert rated.numel() < side.shape[0]
    every = (
        torch.zeros(side.shape[0], *gram.shape[1:], dtype=F64).index_copy_(0, rated, gram),
        torch.zeros(side.shape[0], rhs.shape[1], dtype=F64).index_copy_(0, rated, rhs),
    )
    results = []
    for draw, stats in (
        (chain._draw_genres, (gram, rhs)),
        (lambda *a: _genres_one_at_a_time(chain, *a), every),
    ):
        chain.state.genres = start.clone()
        moved = side.clone()
        torch.manual_seed(7)  # the same random numbers for both
        draw(moved, *stats)
        results.append((chain.state.genres, moved))
    (genres_fast, side_fast), (genres_ref, side_ref) = results
    assert not torch.equal(genres_ref, start)
    torch.testing.assert_close(genres_fast, genres_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(side_fast, side_ref, atol=1e-10, rtol=0)


def test_mf_trains_its_towers_with_adam_and_samples_its_rating_head(dataset: Dataset) -> None:
    train, _, _ = _planted(dataset, seed=2)
    config = MFConfig(epochs=2, dim=8, score_dim=8, batch_size=128, lr=1e-2, bayes_dim=4)
    config = replace(config, bayes_sweeps=30)
    fm, tables = dataset.feature_map, dataset.tables
    model, info = train_component("mf", fm, tables, train, config=config, seed=0, progress=False)
    assert info["bayes_rating"]["sweeps"] == 30
    assert model.rating_history is None and len(info["curves"]) == 2
    assert info["head_epochs"][0] == 0  # no epoch of Adam's is the rating head's
    sampled = _rating(model, dataset, train)
    # A refit of the rating head alone runs no epoch and samples the same head again.
    refit = replace(config, ranking_weight=0.0)
    again, info = train_component(
        "mf", fm, tables, train, config=refit, head_epochs=(2, 2), seed=0, progress=False
    )
    assert info["curves"] == [] and "bayes_rating" in info
    torch.testing.assert_close(_rating(again, dataset, train), sampled, atol=0.05, rtol=0)


def test_only_mf_on_a_catalogue_the_sampler_holds_samples(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    fm = dataset.feature_map
    assert bayes_settings(MFConfig(bayes_dim=5, bayes_sweeps=7), fm) == GibbsSettings(
        dim=5, sweeps=7
    )
    assert bayes_settings(MFConfig(bayes_rating=False), fm) is None
    assert bayes_settings(MFConfig(rating_weight=0.0), fm) is None
    assert bayes_settings(XDeepFMConfig(), fm) is None
    monkeypatch.setattr("training.train.BAYES_MAX_ITEMS", fm.n_items - 1)
    assert bayes_settings(MFConfig(), fm) is None
    assert fm.n_items < BAYES_MAX_ITEMS
