"""Forward/backward shapes of every teacher model, their construction from configs, their
parameter names, and the ensemble as one ONNX graph."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from training import export
from training.data import Dataset, load_dataset
from training.features import make_batch
from training.models.autoint import AutoInt
from training.models.configs import AutoIntConfig, MFConfig, XDeepFMConfig
from training.models.ensemble import DEFAULT_WEIGHTS, EnsembleTeacher
from training.models.layers import TowerScoring
from training.models.mf import BiasedMF
from training.models.xdeepfm import XDeepFM
from training.seen import SeenIndex


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


def _models(ds: Dataset) -> dict[str, TowerScoring]:
    fm = ds.feature_map
    torch.manual_seed(0)
    return {
        "mf": BiasedMF(fm, dim=8, score_dim=6),
        "xdeepfm": XDeepFM(
            fm, dim=4, cin_layers=(5, 3), dnn_layers=(7,), score_dim=6, tower_layers=(9,)
        ),
        "autoint": AutoInt(fm, dim=4, layers=2, heads=2, d_head=3, score_dim=6),
    }


def _inputs(ds: Dataset, batch: int = 7) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(0)
    users = rng.integers(0, ds.feature_map.n_users + 1, batch)
    items = rng.integers(0, ds.feature_map.n_items + 1, batch)
    b = make_batch(ds.tables, users, items)
    return (
        torch.as_tensor(b.user),
        torch.as_tensor(b.item),
        torch.as_tensor(b.user_feats),
        torch.as_tensor(b.item_feats),
        torch.as_tensor(b.item_genres),
    )


@pytest.mark.parametrize("name", ["mf", "xdeepfm", "autoint"])
def test_ratings_are_clipped_to_the_feature_maps_scale(dataset: Dataset, name: str) -> None:
    ds = dataclasses.replace(
        dataset, feature_map=dataclasses.replace(dataset.feature_map, rating_scale=(0.5, 5.0))
    )
    model = _models(ds)[name].eval()
    with torch.no_grad():
        model.mu.fill_(-100.0)  # every rating far below the scale
        rating, _ = model(*_inputs(ds))
        assert torch.all(rating == 0.5)
        model.mu.fill_(100.0)
        rating, _ = model(*_inputs(ds))
        assert torch.all(rating == 5.0)
    teacher = EnsembleTeacher(*_models(ds).values())
    assert teacher.rating_bounds == (0.5, 5.0)


@pytest.mark.parametrize("name", ["mf", "xdeepfm", "autoint"])
def test_component_shapes_and_gradients(dataset: Dataset, name: str) -> None:
    model = _models(dataset)[name]
    inputs = _inputs(dataset)
    out = model.heads(*inputs)
    assert out["rating"].shape == (7,) and out["score"].shape == (7,)
    rating, score = model(*inputs)
    assert torch.all((rating >= 1.0) & (rating <= 5.0))
    # The score head is the tower dot product, so catalogue scoring agrees with it.
    matrix = model.score_matrix(inputs[0].numpy(), dataset.tables)
    assert matrix.shape == (7, dataset.feature_map.n_items + 1)
    torch.testing.assert_close(matrix[torch.arange(7), inputs[1]], score, rtol=1e-4, atol=1e-5)
    loss = out["rating"].pow(2).mean() + out["score"].pow(2).mean()
    loss = loss + model.regularizer(*inputs).mean()
    loss.backward()
    grads = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert any(n.startswith(model.tower_prefixes) for n in grads)
    assert any(not n.startswith(model.tower_prefixes) for n in grads)


def test_each_component_is_built_from_its_config(dataset: Dataset) -> None:
    fm = dataset.feature_map
    mf = MFConfig(dim=8, score_dim=6)
    xdeepfm = XDeepFMConfig(
        dim=4, cin_layers=(5, 3), dnn_layers=(7,), dropout=0.2, score_dim=6, tower_layers=(9,)
    )
    autoint = AutoIntConfig(dim=4, layers=2, heads=2, d_head=3, score_dim=6, tower_layers=1)
    builds: dict[str, tuple[Callable[[], nn.Module], Callable[[], nn.Module]]] = {
        "mf": (
            lambda: BiasedMF.from_config(mf, fm, global_mean=3.7),
            lambda: BiasedMF(fm, dim=8, score_dim=6, global_mean=3.7),
        ),
        "xdeepfm": (
            lambda: XDeepFM.from_config(xdeepfm, fm, global_mean=3.7),
            lambda: XDeepFM(
                fm,
                dim=4,
                cin_layers=(5, 3),
                dnn_layers=(7,),
                dropout=0.2,
                score_dim=6,
                tower_layers=(9,),
                history=True,
                global_mean=3.7,
            ),
        ),
        "autoint": (
            lambda: AutoInt.from_config(autoint, fm, global_mean=3.7),
            lambda: AutoInt(
                fm, dim=4, layers=2, heads=2, d_head=3, score_dim=6, tower_layers=1, global_mean=3.7
            ),
        ),
    }
    # Same seed, same widths: from_config and the keywords build one and the same model.
    for name, (from_config, by_keywords) in builds.items():
        torch.manual_seed(0)
        built = from_config().state_dict()
        torch.manual_seed(0)
        reference = by_keywords().state_dict()
        assert list(built) == list(reference)
        for key, value in built.items():
            assert torch.equal(value, reference[key]), (name, key)
        assert float(built["mu"]) == pytest.approx(3.7)

    model = XDeepFM.from_config(xdeepfm, fm)
    assert model.cin.out_dim == 8
    assert [m.out_features for m in model.dnn if isinstance(m, nn.Linear)] == [7, 1]
    assert [m.p for m in model.dnn if isinstance(m, nn.Dropout)] == [0.2]
    attention = AutoInt.from_config(autoint, fm)
    assert (len(attention.attention), len(attention.tower_attention)) == (2, 1)
    assert attention.repr_dim == attention.embed.n_fields * 2 * 3


def test_parameter_names_are_stable(dataset: Dataset) -> None:
    """Checkpoints, tower_prefixes and the bundle refer to these names."""
    models = _models(dataset)
    embed = [f"{{}}.{n}" for n in ("genre", "user_offsets", "item_offsets", "table.weight")]

    def field_embedding(prefix: str) -> list[str]:
        return [e.format(prefix) for e in embed]

    def params(prefix: str, *indices: object) -> list[str]:
        return [f"{prefix}.{i}{kind}" for i in indices for kind in (".weight", ".bias")]

    assert list(models["mf"].state_dict()) == [
        "mu",
        *field_embedding("factors"),
        *field_embedding("biases"),
        "user_rank.weight",
        "item_rank.weight",
        "item_rank_bias.weight",
    ]
    assert list(models["xdeepfm"].state_dict()) == [
        "mu",
        *field_embedding("embed"),
        *field_embedding("linear"),
        *params("cin.convs", 0, 1),
        "cin_out.weight",
        "cin_out.bias",
        *params("dnn", 0, 3),
        *field_embedding("rank_embed"),
        *params("user_mlp", 0, 2),
        *params("item_mlp", 0, 2),
    ]
    assert list(models["autoint"].state_dict()) == [
        "mu",
        *field_embedding("embed"),
        *field_embedding("linear"),
        "attention.0.qkv.weight",
        "attention.0.residual.weight",
        "attention.1.qkv.weight",
        "attention.1.residual.weight",
        "out.weight",
        "out.bias",
        *field_embedding("rank_embed"),
        "tower_attention.0.qkv.weight",
        "tower_attention.0.residual.weight",
        "user_proj.weight",
        "user_proj.bias",
        "item_proj.weight",
        "item_proj.bias",
    ]
    for model in models.values():
        towers = {n for n in model.state_dict() if n.startswith(model.tower_prefixes)}
        assert towers and "mu" not in towers


def test_autoint_exposes_its_pair_representation(dataset: Dataset) -> None:
    model = _models(dataset)["autoint"]
    rep = model.heads(*_inputs(dataset))["repr"]
    assert isinstance(model, AutoInt)
    assert rep.shape == (7, model.repr_dim)


def test_ensemble_blends_standardised_component_outputs(dataset: Dataset) -> None:
    parts = _models(dataset)
    teacher = EnsembleTeacher(parts["mf"], parts["xdeepfm"], parts["autoint"]).eval()
    users = np.arange(1, dataset.feature_map.n_users + 1)
    teacher.standardise(users, dataset.tables)
    teacher.set_weights(
        rating=[0.5, 0.3, 0.1], rating_bias=0.2, score=[0.2, 0.3, 0.5], rating_score=0.25
    )
    inputs = _inputs(dataset)
    with torch.no_grad():
        out = teacher.heads(*inputs)
        comps = [p.heads(*inputs) for p in parts.values()]
        expected_rating = 0.2 + sum(
            w * c["rating"].clamp(1, 5) for w, c in zip([0.5, 0.3, 0.1], comps, strict=True)
        )
        z = [
            (c["score"] - teacher.score_mean[k]) / teacher.score_std[k] for k, c in enumerate(comps)
        ]
        rated = (comps[0]["rating"] - teacher.rating_score_mean) / teacher.rating_score_std
        expected_score = 0.2 * z[0] + 0.3 * z[1] + 0.5 * z[2] + 0.25 * rated
        matrix = teacher.score_matrix(inputs[0].numpy(), dataset.tables)
    torch.testing.assert_close(out["rating"], expected_rating)
    torch.testing.assert_close(out["score"], expected_score, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        matrix[torch.arange(7), inputs[1]], expected_score, rtol=1e-4, atol=1e-4
    )
    assert out["repr"].shape[0] == 7


def test_mf_rating_factors_give_its_rating_head(dataset: Dataset) -> None:
    mf = _models(dataset)["mf"]
    assert isinstance(mf, BiasedMF)
    user, item, user_feats, item_feats, item_genres = _inputs(dataset)
    with torch.no_grad():
        rating = mf.rating_head(user, item, user_feats, item_feats, item_genres)["rating"]
        left = mf.user_rating_factors(user, user_feats)  # [7, R]
        right = mf.item_rating_factors(item, item_feats, item_genres)  # [7, R]
        matrix = mf.rating_matrix(user.numpy(), dataset.tables)
    torch.testing.assert_close((left * right).sum(1) + mf.rating_offset(), rating)
    torch.testing.assert_close(matrix[torch.arange(7), item - 1], rating)


def test_the_ensemble_needs_a_biased_mf(dataset: Dataset) -> None:
    parts = _models(dataset)
    with pytest.raises(TypeError, match="BiasedMF"):
        EnsembleTeacher(parts["autoint"], parts["xdeepfm"], parts["autoint"])


def test_ensemble_defaults_are_the_design_weights(dataset: Dataset) -> None:
    parts = _models(dataset)
    teacher = EnsembleTeacher(parts["mf"], parts["xdeepfm"], parts["autoint"])
    assert teacher.rating_weights.tolist() == pytest.approx(list(DEFAULT_WEIGHTS))
    assert teacher.score_weights.tolist() == pytest.approx(list(DEFAULT_WEIGHTS))
    assert "rating_weights" in teacher.state_dict()


def test_ensemble_exports_as_one_onnx_graph(dataset: Dataset, tmp_path: Path) -> None:
    parts = _models(dataset)
    teacher = EnsembleTeacher(parts["mf"], parts["xdeepfm"], parts["autoint"]).eval()
    teacher.standardise(np.arange(1, 10), dataset.tables)
    teacher.set_weights(
        rating=DEFAULT_WEIGHTS, rating_bias=0.0, score=DEFAULT_WEIGHTS, rating_score=0.1
    )
    fm = dataset.feature_map
    path = export.export_onnx(teacher, fm, tmp_path / "teacher.onnx", metadata={})
    batch = export.random_batch(fm, 11, rng=np.random.default_rng(3))
    rating, score = export.ort_predict(export.ort_session(path), batch)
    with torch.no_grad():
        ref_rating, ref_score = teacher(
            torch.as_tensor(batch.user),
            torch.as_tensor(batch.item),
            torch.as_tensor(batch.user_feats),
            torch.as_tensor(batch.item_feats),
            torch.as_tensor(batch.item_genres),
        )
    np.testing.assert_allclose(rating, ref_rating.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, ref_score.numpy(), rtol=1e-4, atol=1e-4)


def test_mf_folds_its_histories_into_plain_user_tables(dataset: Dataset) -> None:
    fm, tables = dataset.feature_map, dataset.tables
    model = _models(dataset)["mf"]
    assert isinstance(model, BiasedMF)
    fresh_keys = set(model.state_dict())
    seen = SeenIndex.from_ratings(dataset.ratings, n_users=fm.n_users, n_items=fm.n_items)
    indptr, items = torch.as_tensor(seen.indptr), torch.as_tensor(seen.indices)
    model.attach_history(indptr, items, alpha=0.5, rating=True)
    assert model.history is not None and model.rating_history is not None
    for term in (model.history, model.rating_history):
        torch.nn.init.normal_(term.table.weight, std=0.1)
    users = np.arange(fm.n_users + 1)
    inputs = _inputs(dataset, batch=50)
    with torch.no_grad():
        scores, rating = model.score_matrix(users, tables), model.heads(*inputs)["rating"]
        model.history, model.rating_history, kept = (
            None,
            None,
            (model.history, model.rating_history),
        )
        plain_scores, plain_rating = (
            model.score_matrix(users, tables),
            model.heads(*inputs)["rating"],
        )
        model.history, model.rating_history = kept
    # The histories move both heads' user vectors ...
    assert not torch.allclose(scores, plain_scores)
    assert not torch.allclose(rating, plain_rating)
    model.fold_history()
    # ... and folding keeps every score and rating while leaving plain MF behind.
    assert model.history is None and model.rating_history is None
    with torch.no_grad():
        torch.testing.assert_close(model.score_matrix(users, tables), scores)
        torch.testing.assert_close(model.heads(*inputs)["rating"], rating)
    assert set(model.state_dict()) == fresh_keys  # checkpoints and export see plain MF


def test_xdeepfm_folds_its_history_into_a_frozen_user_table(dataset: Dataset) -> None:
    fm, tables = dataset.feature_map, dataset.tables
    torch.manual_seed(0)
    model = XDeepFM(fm, dim=4, cin_layers=(5,), dnn_layers=(7,), score_dim=6, history=True)
    model.eval()
    assert model.user_offset is not None and not model.user_offset.weight.requires_grad
    fresh_keys = set(model.state_dict())
    seen = SeenIndex.from_ratings(dataset.ratings, n_users=fm.n_users, n_items=fm.n_items)
    model.attach_history(torch.as_tensor(seen.indptr), torch.as_tensor(seen.indices), alpha=0.5)
    assert model.history is not None
    torch.nn.init.normal_(model.history.table.weight, std=0.1)
    users = np.arange(fm.n_users + 1)
    with torch.no_grad():
        scores = model.score_matrix(users, tables)
        kept, model.history = model.history, None
        plain = model.score_matrix(users, tables)
        model.history = kept
    assert not torch.allclose(scores, plain)
    # Training leaves each training pair's item out of its user's history (UserHistory's
    # `exclude`); serving does not.
    inputs = _inputs(dataset, batch=20)
    with torch.no_grad():
        served = model.user_tower(inputs[0], inputs[2])
        trained = model.train_user_tower(inputs[0], inputs[2], inputs[1])
    pairs = zip(inputs[0].tolist(), inputs[1].tolist(), strict=True)
    rated = torch.as_tensor(
        [i in seen.indices[seen.indptr[u] : seen.indptr[u + 1]] for u, i in pairs]
    )
    same = torch.isclose(served, trained).all(dim=1)
    assert bool(rated.any()) and not bool(same[rated].any())
    model.fold_history()
    assert model.history is None and set(model.state_dict()) == fresh_keys
    with torch.no_grad():
        torch.testing.assert_close(model.score_matrix(users, tables), scores)
    # The folded table counts in the model's size but not among what training updates.
    assert "user_offset.weight" in dict(model.named_parameters())
    assert "user_offset.weight" not in {n for g in _optimised(model) for n in g}


def _optimised(model: TowerScoring) -> list[list[str]]:
    """Names of the parameters each of the component's optimisers updates."""
    from training.sparse import Optimizers  # noqa: PLC0415
    from training.train import make_optimizer  # noqa: PLC0415

    ids = {id(p): n for n, p in model.named_parameters()}
    opt = make_optimizer(model, XDeepFMConfig())
    opts = opt.parts if isinstance(opt, Optimizers) else [opt]
    return [[ids[id(p)] for g in o.param_groups for p in g["params"]] for o in opts]


def test_xdeepfm_without_history_refuses_one(dataset: Dataset) -> None:
    model = _models(dataset)["xdeepfm"]
    assert isinstance(model, XDeepFM) and model.user_offset is None
    empty = torch.zeros(dataset.feature_map.user_vocab + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="without history"):
        model.attach_history(empty, torch.zeros(0, dtype=torch.long), alpha=0.5)


@pytest.mark.parametrize("name", ["mf", "xdeepfm", "autoint"])
def test_rating_fit_is_the_rating_head_and_its_penalty(dataset: Dataset, name: str) -> None:
    model = _models(dataset)[name]
    if isinstance(model, BiasedMF):
        fm = dataset.feature_map
        seen = SeenIndex.from_ratings(dataset.ratings, n_users=fm.n_users, n_items=fm.n_items)
        model.attach_history(
            torch.as_tensor(seen.indptr), torch.as_tensor(seen.indices), alpha=0.5, rating=True
        )
        assert model.rating_history is not None
        torch.nn.init.normal_(model.rating_history.table.weight, std=0.1)
    model.eval()  # xDeepFM's DNN dropout would draw different masks per call
    inputs = _inputs(dataset, batch=20)
    rating, penalty = model.rating_fit(*inputs)
    heads = model.heads(*inputs)
    torch.testing.assert_close(rating, heads["rating"])
    torch.testing.assert_close(penalty, model.regularizer(*inputs))
    assert set(heads) >= {"rating", "score"} and bool((penalty > 0).all())
