"""Teacher training: determinism, cold-start learning, the ensemble fit, an end-to-end run."""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.training.test_distill import quick_teacher
from training import blend_scores, blend_topk, train
from training.blend_scores import TeacherScores
from training.blend_topk import blend
from training.component_pool import ComponentTask
from training.data import Dataset, Ratings, holdout, load_dataset, make_split
from training.evaluate import (
    evaluate_model,
    evaluate_popularity,
    ranking_metrics,
    rating_metrics,
)
from training.features import FeatureMap, FeatureTables
from training.models.ensemble import EnsembleTeacher
from training.seen import SeenIndex
from training.train import (
    REFIT_MAX_RATINGS,
    AutoIntConfig,
    HeadSelector,
    MFConfig,
    TeacherConfig,
    TrainData,
    Trainer,
    XDeepFMConfig,
    _blend_ranking,
    _merge_heads,
    _refit_tasks,
    component_loss,
    fit_ensemble_weights,
    make_optimizer,
    ranking_negatives,
    simplex_grid,
    train_component,
    train_teacher,
    training_model,
)

# Adam's rating head, whose epochs, per-head selection and stopping these tests check; the
# sampled head (MFConfig.bayes_rating) has its own tests in test_bayes_rating.py.
QUICK_MF = MFConfig(epochs=2, dim=8, score_dim=8, batch_size=128, lr=1e-2, bayes_rating=False)


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


@pytest.fixture(scope="module")
def train_ratings(dataset: Dataset, synthetic_ml100k: Path) -> Ratings:
    return make_split(dataset, split="u1", data_dir=synthetic_ml100k).train


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("mf", QUICK_MF),
        (
            "xdeepfm",
            XDeepFMConfig(
                epochs=1,
                dim=4,
                cin_layers=(4,),
                dnn_layers=(8,),
                tower_layers=(8,),
                score_dim=4,
                batch_size=256,
            ),
        ),
        (
            "autoint",
            AutoIntConfig(epochs=1, dim=4, layers=1, d_head=4, score_dim=4, batch_size=256),
        ),
    ],
)
def test_training_is_deterministic_under_a_seed(
    dataset: Dataset, train_ratings: Ratings, name: str, config: object
) -> None:
    def run(seed: int) -> dict[str, torch.Tensor]:
        model, _ = train_component(
            name,
            dataset.feature_map,
            dataset.tables,
            train_ratings,
            config=config,
            seed=seed,
            progress=False,
        )
        return model.state_dict()

    first, second, other = run(3), run(3), run(4)
    assert first.keys() == second.keys()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_id_dropout_trains_the_unknown_user_and_item(
    dataset: Dataset, train_ratings: Ratings
) -> None:
    def rows(dropout: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model, _ = train_component(
            "mf",
            dataset.feature_map,
            dataset.tables,
            train_ratings,
            config=replace(QUICK_MF, id_dropout=dropout),
            progress=False,
        )
        return model.factors.table.weight[0].detach(), model.item_rank.weight[0].detach()

    plain = rows(0.0)
    dropped = rows(0.2)
    # Without id-dropout index 0 never occurs in training and keeps its initial values.
    init_model, _ = train_component(
        "mf",
        dataset.feature_map,
        dataset.tables,
        train_ratings,
        config=replace(QUICK_MF, epochs=0),
        progress=False,
    )
    torch.testing.assert_close(plain[0], init_model.factors.table.weight[0].detach())
    assert not torch.allclose(dropped[0], init_model.factors.table.weight[0].detach())
    assert not torch.allclose(dropped[1], init_model.item_rank.weight[0].detach())


def test_per_head_selection_records_each_heads_epoch(
    dataset: Dataset, train_ratings: Ratings
) -> None:
    fit, valid = holdout(train_ratings, fraction=0.2, seed=0)
    _, info = train_component(
        "mf",
        dataset.feature_map,
        dataset.tables,
        fit,
        config=replace(QUICK_MF, epochs=3),
        valid=valid,
        progress=False,
    )
    assert len(info["curves"]) == 3
    rmse = [p["valid_rmse"] for p in info["curves"]]
    ndcg = [p["valid_ndcg@10"] for p in info["curves"]]
    assert info["head_epochs"][0] == int(np.argmin(rmse)) + 1
    assert info["head_epochs"][1] == int(np.argmax(ndcg)) + 1


def test_seen_index_finds_training_pairs() -> None:
    train = Ratings(
        user=np.array([1, 1, 2]),
        item=np.array([2, 5, 1]),
        rating=np.ones(3, dtype=np.float32),
        timestamp=np.zeros(3, dtype=np.int64),
    )
    fm = FeatureMap(n_users=3, n_items=5)
    tables = FeatureTables(
        user_feats=np.zeros((4, 1), np.int64),
        item_feats=np.zeros((6, 1), np.int64),
        item_genres=np.zeros((6, 1), np.float32),
    )
    seen = TrainData.build(train, tables, fm)
    got = seen.seen(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
    assert got.tolist() == [[False, True, True], [True, False, False], [False, False, False]]
    # The torch lookup of the training loop answers as the one SeenIndex does.
    index = SeenIndex.from_ratings(train, n_users=3, n_items=5)
    expected = index.contains(np.array([[1], [2], [3]]), np.array([[1, 2, 5]]))
    assert got.tolist() == expected.tolist()


def test_small_catalogues_get_an_exact_softmax_and_large_ones_a_sample() -> None:
    gen = torch.Generator().manual_seed(0)
    small = MFConfig(n_negatives=16, exact_softmax_items=40)
    assert ranking_negatives(small, 40, gen) is None
    sampled = ranking_negatives(small, 41, gen)
    assert sampled is not None and sampled.shape == (16,)
    assert int(sampled.min()) >= 1 and int(sampled.max()) <= 41
    no_threshold = MFConfig(n_negatives=16, exact_softmax_items=0)
    drawn = ranking_negatives(no_threshold, 40, gen)
    assert drawn is not None and drawn.shape == (16,)
    # A sample as large as the catalogue, or n_negatives 0, is the catalogue itself.
    assert ranking_negatives(replace(no_threshold, n_negatives=40), 40, gen) is None
    assert ranking_negatives(replace(no_threshold, n_negatives=0), 40, gen) is None


@pytest.mark.parametrize("name", ["mf", "xdeepfm", "autoint"])
def test_exact_softmax_is_the_softmax_over_every_unrated_item(
    dataset: Dataset, train_ratings: Ratings, name: str
) -> None:
    # The ranking loss alone against its definition: separate tower passes over the batch
    # and over the catalogue, rated items left out; id-dropout's draws repeated from the
    # same seed, so that dropped positives (their own side features) are covered.
    config = replace(
        getattr(TeacherConfig().quick(), name), rating_weight=0.0, tower_l2=0.0, id_dropout=0.3
    )
    data = TrainData.build(train_ratings, dataset.tables, dataset.feature_map)
    model = training_model(name, dataset.feature_map, config, data, global_mean=3.5)
    trainer = Trainer(
        name, model, config, data, make_optimizer(model, config),
        torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    idx = torch.arange(0, len(data), 16)
    u, i, r = data.users[idx], data.items[idx], data.ratings[idx]
    _, _, loss = component_loss(trainer, u, i, r)
    gen = torch.Generator().manual_seed(0)
    u_in = u.masked_fill(torch.rand(u.shape, generator=gen) < 0.3, 0)
    i_in = i.masked_fill(torch.rand(i.shape, generator=gen) < 0.3, 0)
    assert (i_in == 0).any() and (i_in != 0).any()
    every = torch.arange(1, data.n_items + 1)
    user_vec = model.train_user_tower(u_in, data.user_feats[u], i)
    pos = (user_vec * model.item_tower(i_in, data.item_feats[i], data.item_genres[i])).sum(1)
    neg = user_vec @ model.item_tower(every, data.item_feats[every], data.item_genres[every]).T
    seen = SeenIndex.from_ratings(
        train_ratings, n_users=dataset.feature_map.n_users, n_items=data.n_items
    )
    rated = torch.as_tensor(seen.contains(u.numpy()[:, None], every.numpy()[None, :]))
    logits = torch.cat([pos[:, None], neg.masked_fill(rated, float("-inf"))], dim=1)
    weight = torch.where(r >= 4, 1.0, config.low_rating_weight)
    want = ((torch.logsumexp(logits, 1) - pos) * weight).sum() / weight.sum()
    torch.testing.assert_close(loss, want)
    params = [p for p in model.parameters() if p.requires_grad]
    got_grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    want_grads = torch.autograd.grad(want, params, allow_unused=True)
    assert any(g is not None for g in want_grads)
    for got, expected in zip(got_grads, want_grads, strict=True):
        assert (got is None) == (expected is None)
        if expected is not None:
            torch.testing.assert_close(_dense(got), _dense(expected), atol=1e-5, rtol=1e-4)


def _dense(grad: torch.Tensor | None) -> torch.Tensor | None:
    return grad.to_dense() if grad is not None and grad.is_sparse else grad


def test_simplex_grid_covers_the_simplex() -> None:
    grid = simplex_grid(0.5)
    assert len(grid) == 6
    assert all(abs(sum(w) - 1.0) < 1e-9 and min(w) >= 0 for w in grid)
    assert (0.5, 0.0, 0.5) in grid
    assert len(simplex_grid(0.05)) == 231


def test_the_blend_search_finds_the_same_weights_on_several_threads(
    dataset: Dataset, train_ratings: Ratings
) -> None:
    fit, valid = holdout(train_ratings, fraction=0.1, seed=0)
    teacher = quick_teacher(dataset)
    reports, teachers = [], []
    for workers in (1, 3):
        twin = copy.deepcopy(teacher)
        reports.append(
            fit_ensemble_weights(
                twin,
                dataset.tables,
                fit=fit,
                valid=valid,
                fm=dataset.feature_map,
                step=0.1,
                workers=workers,
            )
        )
        teachers.append(twin)
    assert reports[0] == reports[1]
    a, b = (t.state_dict() for t in teachers)
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("block", [0, 7])
@pytest.mark.parametrize("per_matrix", [3, 20, 256])
def test_the_blend_search_ranks_as_over_the_whole_catalogue(
    dataset: Dataset,
    train_ratings: Ratings,
    per_matrix: int,
    block: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every grid point's metrics from candidate lists (training/blend_topk.py) equal the
    blend ranked over the catalogue, with MF's rating in the score too. With 3 candidates
    per matrix every row needs the whole catalogue, with 20 a few, with 256 (above its 80
    items) none: both paths are checked, with the users' scores whole and in blocks of 7."""
    monkeypatch.setattr(blend_topk, "CANDIDATES_PER_MATRIX", per_matrix)
    if block:
        monkeypatch.setattr(blend_scores, "block_users", lambda n_items: block)
    fit, valid = holdout(train_ratings, fraction=0.1, seed=0)
    users = np.unique(valid.user[valid.rating >= 4.0])
    fm = dataset.feature_map
    ranking, lists = _blend_ranking(
        quick_teacher(dataset), dataset.tables, users, fit=fit, valid=valid, fm=fm
    )
    size = lists.scores.block_rows
    assert size == (block or users.size)
    z = np.concatenate([lists.scores.block(s) for s in range(0, users.size, size)], axis=1)
    row_of = dict(zip(users.tolist(), range(users.size), strict=True))
    sub_valid = valid.subset(np.isin(valid.user, users))
    for point, g in [(w, 0.0) for w in simplex_grid(0.25)] + [((0.2, 0.3, 0.5), 0.4)]:
        w = np.array([*point, g] if g else point)
        whole = ranking_metrics(
            lambda us, w=w: blend(w, z[: w.size, [row_of[u] for u in us]]),
            train=fit,
            test=sub_valid,
            n_users=fm.n_users,
            n_items=fm.n_items,
        )
        assert ranking(np.asarray(point), g) == whole
    full, rows = sum(lists.full_rows), sum(lists.rows)
    assert {3: full == rows, 20: 0 < full < rows, 256: full == 0}[per_matrix]


def test_scores_in_blocks_are_standardised_on_the_first_block(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks score with towers computed once; the teacher's and every block's
    standardisation come from the first block's users alone."""
    monkeypatch.setattr(blend_scores, "block_users", lambda n_items: 6)
    teacher = quick_teacher(dataset)
    users = np.random.default_rng(0).permutation(np.arange(1, 21))
    scores = TeacherScores(teacher, dataset.tables, users)
    raw = [*teacher.component_score_matrices(users, dataset.tables)]
    raw.append(teacher.mf.rating_matrix(users, dataset.tables))
    first = [m[:6] for m in raw]
    for c in range(3):
        assert float(teacher.score_mean[c]) == pytest.approx(float(first[c].mean()), abs=1e-6)
        assert float(teacher.score_std[c]) == pytest.approx(float(first[c].std()), rel=1e-5)
    assert float(teacher.rating_score_mean) == pytest.approx(float(first[3].mean()), abs=1e-5)
    z = np.concatenate([scores.block(s) for s in (0, 6, 12, 18)], axis=1)
    want = np.stack([((m - f.mean()) / f.std()).numpy() for m, f in zip(raw, first, strict=True)])
    np.testing.assert_allclose(z, want, atol=1e-4)


def test_quick_teacher_learns_on_synthetic_data(dataset: Dataset, synthetic_ml100k: Path) -> None:
    split = make_split(dataset, split="u1", data_dir=synthetic_ml100k)
    config = TeacherConfig(progress=False, threads=1, seed=0).quick()
    teacher, report = train_teacher(dataset, split.train, config=config)
    assert isinstance(teacher, EnsembleTeacher)
    assert set(report["components"]) == {"mf", "xdeepfm", "autoint"}
    for part in ("default", "fitted"):
        assert np.isfinite(report["ensemble"][part]["rmse"])
        assert sum(report["ensemble"][part]["score_weights"]) == pytest.approx(1.0)
    assert min(report["ensemble"]["fitted"]["rating_weights"]) >= 0.0
    # The blend is fitted on validation data, so it cannot be worse there than the default.
    assert report["ensemble"]["fitted"]["rmse"] <= report["ensemble"]["default"]["rmse"] + 1e-9
    assert report["ensemble"]["fitted"]["ndcg@10"] >= report["ensemble"]["default"]["ndcg@10"]

    fm = dataset.feature_map
    metrics = evaluate_model(
        teacher,
        dataset.tables,
        train=split.train,
        test=split.test,
        n_users=fm.n_users,
        n_items=fm.n_items,
    )
    constant = rating_metrics(
        np.full(len(split.test), split.train.rating.mean()), split.test.rating
    )
    # The planted data has strong user and item effects: a teacher that learned beats the mean.
    assert metrics["rmse"] < constant["rmse"] - 0.05
    assert 0.0 < metrics["ndcg@10"] <= 1.0


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MOVIELENS_DIR"), reason="MOVIELENS_DIR is not set")
def test_quick_teacher_on_real_movielens_beats_popularity() -> None:
    data_dir = Path(os.environ["MOVIELENS_DIR"])
    ds = load_dataset(data_dir)
    split = make_split(ds, split="u1", data_dir=data_dir)
    # One thread: on a shared 2-core CI runner a second OpenMP thread mostly spins.
    config = TeacherConfig(progress=False, threads=1, seed=0).quick()
    teacher, _ = train_teacher(ds, split.train, config=config)
    fm = ds.feature_map
    metrics = evaluate_model(
        teacher,
        ds.tables,
        train=split.train,
        test=split.test,
        n_users=fm.n_users,
        n_items=fm.n_items,
    )
    pop = evaluate_popularity(split.train, split.test, n_users=fm.n_users, n_items=fm.n_items)
    # Loose bounds that a broken model fails: quick mode is far from the benchmark numbers.
    assert metrics["rmse"] < 0.98
    assert metrics["ndcg@10"] > pop["ndcg@10"]


def test_refit_on_all_training_data_keeps_the_fitted_blend(
    dataset: Dataset, train_ratings: Ratings, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = replace(TeacherConfig(progress=False, threads=1, seed=1).quick(), refit_full=True)
    # The refitted teacher is standardised on a bounded sample of the validation users:
    # users x catalogue scores per matrix, and a small data set can have a large catalogue.
    monkeypatch.setattr(train, "block_users", lambda n_items: 40)
    standardised: list[int] = []
    standardise = EnsembleTeacher.standardise

    def counted(self: EnsembleTeacher, users: np.ndarray, *args: Any, **kwargs: Any) -> None:
        standardised.append(users.size)
        standardise(self, users, *args, **kwargs)

    monkeypatch.setattr(EnsembleTeacher, "standardise", counted)
    teacher, report = train_teacher(dataset, train_ratings, config=config)
    assert standardised[-1] == 40 < np.unique(train_ratings.user).size
    fitted = report["ensemble"]["fitted"]
    assert teacher.rating_weights.tolist() == pytest.approx(fitted["rating_weights"], abs=1e-6)
    assert teacher.score_weights.tolist() == pytest.approx(fitted["score_weights"], abs=1e-6)
    for info in report["components"].values():
        assert set(info["refit_seconds"]) == set(info["refit_heads"])
        assert min(info["refit_seconds"].values()) > 0.0
    # Re-standardised on the refitted components' own scores.
    users = np.unique(train_ratings.user)
    mats = teacher.component_score_matrices(users, dataset.tables)
    assert float(mats[0].std()) == pytest.approx(float(teacher.score_std[0]), rel=0.5)


def test_empty_training_data_gives_a_clear_error(dataset: Dataset) -> None:
    with pytest.raises(ValueError, match="training split has no ratings"):
        train_component(
            "mf",
            dataset.feature_map,
            dataset.tables,
            Ratings.empty(),
            config=QUICK_MF,
            progress=False,
        )
    with pytest.raises(ValueError, match="unknown component 'svd'"):
        train_component(
            "svd",
            dataset.feature_map,
            dataset.tables,
            _one_rating(),
            config=QUICK_MF,
            progress=False,
        )


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        (
            [1.0] * 50,
            r"no training rating is 4 or more \(the highest is 1\).*the rating 5",
        ),
        ([4.0, 2.0, 5.0], "3 training ratings are too few for a validation split"),
    ],
)
def test_what_the_teacher_cannot_select_on_is_named(
    dataset: Dataset, ratings: list[float], message: str
) -> None:
    n = len(ratings)
    train = Ratings(
        user=np.arange(n) % 5 + 1,
        item=np.arange(n) + 1,
        rating=np.array(ratings, np.float32),
        timestamp=np.zeros(n, dtype=np.int64),
    )
    with pytest.raises(ValueError, match=message):
        train_teacher(dataset, train, config=TeacherConfig(progress=False, threads=1).quick())


def _one_rating() -> Ratings:
    return Ratings(
        user=np.array([1]),
        item=np.array([1]),
        rating=np.array([4.0], np.float32),
        timestamp=np.zeros(1, dtype=np.int64),
    )


def test_refit_full_auto_refits_only_small_training_sets() -> None:
    config = TeacherConfig()
    assert config.refit_full == "auto"
    assert config.refits(80_000)  # ml-100k folds keep the refit
    assert not config.refits(900_000)  # ML-1M-sized data skip it
    assert replace(config, refit_full=True).refits(10 * REFIT_MAX_RATINGS)
    assert not replace(config, refit_full=False).refits(10)


def test_training_stops_once_no_head_improves_for_patience_epochs(
    dataset: Dataset, train_ratings: Ratings
) -> None:
    fit, valid = holdout(train_ratings, fraction=0.2, seed=0)
    runs = {}
    for patience in (0, 1):  # every epoch, then stop after one epoch without a new best
        runs[patience] = train_component(
            "mf",
            dataset.feature_map,
            dataset.tables,
            fit,
            config=replace(
                QUICK_MF, epochs=12, lr=0.05, tower_lr=0.05, patience=patience, stop_heads=False
            ),
            valid=valid,
            progress=False,
            seed=1,
        )[1]
    full, early = runs[0], runs[1]
    assert len(full["curves"]) == 12
    # The full run's curves up to the stop are the early run's, and the stop came one
    # epoch after the last epoch where either head reached a new best.
    n = len(early["curves"])
    assert early["curves"] == full["curves"][:n]
    rmse = [p["valid_rmse"] for p in early["curves"]]
    ndcg = [p["valid_ndcg@10"] for p in early["curves"]]
    best = max(int(np.argmin(rmse)), int(np.argmax(ndcg))) + 1
    assert n == min(best + 1, 12)
    assert early["head_epochs"] == [int(np.argmin(rmse)) + 1, int(np.argmax(ndcg)) + 1]


def test_a_stale_head_stops_alone_while_the_other_trains_as_in_a_joint_run(
    dataset: Dataset, train_ratings: Ratings
) -> None:
    fit, valid = holdout(train_ratings, fraction=0.2, seed=0)
    base = replace(QUICK_MF, epochs=12, lr=0.05, tower_lr=0.05, patience=1)
    runs = {
        flag: train_component(
            "mf", dataset.feature_map, dataset.tables, fit, config=replace(base, stop_heads=flag),
            valid=valid, progress=False, seed=1,
        )
        for flag in (False, True)
    }  # fmt: skip
    joint, alone = runs[False][1]["curves"], runs[True][1]["curves"]
    # The ranking head stops first on this data: from then on its loss is off and its
    # metric frozen, while the rating head's curve stays the joint run's, to the bit.
    stopped = next(n for n, p in enumerate(alone) if p["rank"] == 0.0)
    assert 0 < stopped < len(alone) - 1
    assert {p["valid_ndcg@10"] for p in alone[stopped - 1 :]} == {
        alone[stopped - 1]["valid_ndcg@10"]
    }
    assert all(p["rank"] == 0.0 for p in alone[stopped:])

    def rating(curves: list[dict[str, float]]) -> list[tuple[float, float]]:
        return [(p["mse"], p["valid_rmse"]) for p in curves]

    assert rating(alone) == rating(joint[: len(alone)])
    assert len(alone) <= len(joint)
    # So the rating head kept is the joint run's, parameter for parameter.
    (model, info), (joint_model, joint_info) = runs[True], runs[False]
    assert info["head_epochs"][0] == joint_info["head_epochs"][0]
    towers = model.tower_prefixes
    for key, value in joint_model.state_dict().items():
        if not key.startswith(towers):
            assert torch.equal(model.state_dict()[key], value), key


def test_head_selector_is_stale_only_after_a_plateau_of_patience_epochs() -> None:
    selector = HeadSelector(select="heads")
    model = torch.nn.Linear(1, 1)
    assert not selector.stale(5, 2)  # nothing observed yet
    selector.observe(model, 1, {"rmse": 1.0, "ndcg@10": 0.1})
    selector.observe(model, 2, {"rmse": 0.9, "ndcg@10": 0.1})
    assert not selector.stale(3, 2) and selector.stale(4, 2)
    assert not selector.stale(40, 0)  # patience 0 never stops
    selector.observe(model, 3, {"rmse": 0.8, "ndcg@10": 0.1})
    assert selector.head_stale("ranking", 3, 2) and not selector.head_stale("rating", 3, 2)


def test_a_head_left_out_of_the_refit_keeps_its_first_run_parameters(
    dataset: Dataset, train_ratings: Ratings
) -> None:
    quick = TeacherConfig(progress=False, threads=1, seed=2).quick()
    assert quick.xdeepfm.refit_heads == ("rating",)  # the default, as bench/refit.py found
    first, _ = train_teacher(dataset, train_ratings, config=quick)
    both, report = train_teacher(dataset, train_ratings, config=replace(quick, refit_full=True))
    assert report["components"]["xdeepfm"]["refit_heads"] == ["rating"]
    towers = both.xdeepfm.tower_prefixes
    for (name, kept), (_, refitted) in zip(
        first.xdeepfm.named_parameters(), both.xdeepfm.named_parameters(), strict=True
    ):
        assert torch.equal(kept, refitted) == name.startswith(towers), name
    # The components refitting both heads change both.
    assert not torch.equal(first.mf.state_dict()["user_rank.weight"], both.mf.user_rank.weight)


def test_a_refit_of_one_head_runs_that_head_alone(dataset: Dataset, train_ratings: Ratings) -> None:
    config = replace(TeacherConfig().quick().xdeepfm, refit_heads=("rating",))
    (task,) = _refit_tasks(ComponentTask("xdeepfm", config=config, seed=0), {"head_epochs": [2, 3]})
    assert task.head == "rating" and task.head_epochs == (2, 2)
    assert task.config.ranking_weight == 0.0
    data = TrainData.build(train_ratings, dataset.tables, dataset.feature_map)
    model = training_model("xdeepfm", dataset.feature_map, task.config, data, global_mean=3.5)
    trainer = Trainer(
        "xdeepfm", model, task.config, data, make_optimizer(model, task.config),
        torch.Generator().manual_seed(0), progress=False,
    )  # fmt: skip
    idx = torch.arange(64)
    loss, mse, rank = component_loss(trainer, data.users[idx], data.items[idx], data.ratings[idx])
    loss.backward()
    assert float(rank.detach()) == 0.0 and float(mse.detach()) > 0.0
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith(model.tower_prefixes), name
    for heads in [(), ("rating", "rating"), ("rating", "towers")]:
        with pytest.raises(ValueError, match="refit_heads"):
            _refit_tasks(
                ComponentTask("mf", config=replace(config, refit_heads=heads), seed=0),  # type: ignore[arg-type]
                {"head_epochs": [1, 1]},
            )


@pytest.mark.parametrize("exact_softmax_items", [0, 100_000])
@pytest.mark.parametrize("name", ["mf", "xdeepfm"])
def test_a_refit_head_by_head_equals_a_joint_run(
    dataset: Dataset, train_ratings: Ratings, name: str, exact_softmax_items: int
) -> None:
    # One process per head trains each head for its own epochs; the heads share no
    # parameters and the random draws do not depend on which heads run, so each head is
    # the one a joint run gives at that epoch, to the bit.
    quick = TeacherConfig().quick()
    base = replace(
        getattr(quick, name), refit_heads=("rating", "ranking"), n_negatives=32,
        exact_softmax_items=exact_softmax_items,
    )  # fmt: skip
    fm, tables = dataset.feature_map, dataset.tables

    def run(config: object, epochs: tuple[int, int]) -> torch.nn.Module:
        model, _ = train_component(
            name, fm, tables, train_ratings, config=config, head_epochs=epochs, seed=3,
            progress=False,
        )  # fmt: skip
        return model

    joint = run(base, (2, 3))
    tasks = _refit_tasks(ComponentTask(name, config=base, seed=3), {"head_epochs": [2, 3]})
    assert [(t.head, t.head_epochs) for t in tasks] == [("rating", (2, 2)), ("ranking", (3, 3))]
    rating, ranking = (run(t.config, t.head_epochs).state_dict() for t in tasks)
    merged = _merge_heads(joint, rating, ranking)
    for key, value in joint.state_dict().items():
        assert torch.equal(merged[key], value), key
