"""The student model: shapes, exact pruning, ONNX parity, and the whole stage in quick mode."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.datagen import write_ml100k
from training.data import load_dataset, make_split
from training.distill import distill_student
from training.distill_config import StudentConfig
from training.evaluate import evaluate_model, rating_metrics
from training.export import export_onnx
from training.features import FeatureMap, FieldSpec, make_batch
from training.fisher_analysis import fisher_report
from training.models.base import count_params, to_inputs
from training.models.student import UNIT_KINDS, Student, StudentShape, shape_params
from training.report import RESULTS_BEGIN, RESULTS_END, write_student_report
from training.train import TeacherConfig, train_teacher

SMALL = StudentShape(
    user_score_dim=6,
    user_rating_dim=4,
    item_score_dim=5,
    item_rating_dim=3,
    user_hidden=7,
    item_hidden=4,
    rating_factor=3,
    score_factor=4,
)


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


def inputs(fm: FeatureMap, n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, fm.user_vocab, (n,), generator=g),
        torch.randint(0, fm.item_vocab, (n,), generator=g),
        torch.stack([torch.randint(0, v, (n,), generator=g) for v in fm.user_field_vocabs], 1),
        torch.stack([torch.randint(0, v, (n,), generator=g) for v in fm.item_field_vocabs], 1),
        (torch.rand(n, fm.n_genres, generator=g) < 0.4).float(),
    )


def test_shapes_and_parameter_count() -> None:
    fm = feature_map()
    model = Student(fm, shape=SMALL)
    out = model.heads(*inputs(fm, 13))
    assert out["rating"].shape == (13,)
    assert out["score"].shape == (13,)
    assert out["repr"].shape == (13, SMALL.rating_factor + SMALL.score_factor)
    assert count_params(model) == shape_params(fm, SMALL)
    with torch.no_grad():
        rating, _ = model(*inputs(fm, 13))
    assert float(rating.min()) >= 1.0 and float(rating.max()) <= 5.0


def _silence_unit(model: Student, kind: str, j: int) -> None:
    """Zeroes the weights that feed unit j, so that the unit outputs exactly zero."""
    with torch.no_grad():
        if kind.endswith("_dim"):
            tower = model.user if kind.startswith("user") else model.item
            col = j if "score" in kind else tower.score_dim + j
            for table in tower.embeddings():
                table.weight[:, col] = 0.0
            if tower.genre is not None:
                tower.genre.weight[col] = 0.0
        elif kind in ("user_hidden", "item_hidden"):
            tower = model.user if kind == "user_hidden" else model.item
            tower.hidden.weight[j] = 0.0
            tower.hidden.bias[j] = 0.0
        else:
            name = "rating_out" if kind == "rating_factor" else "score_out"
            layer = getattr(model.user, name)
            layer.weight[j] = 0.0
            layer.bias[j] = 0.0


@pytest.mark.parametrize("kind", UNIT_KINDS)
def test_removing_silent_units_keeps_the_function(kind: str) -> None:
    fm = feature_map()
    torch.manual_seed(1)
    model = Student(fm, shape=SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)  # biases too, so that nothing is trivially zero
    drop = [0, 2]
    for j in drop:
        _silence_unit(model, kind, j)
    x = inputs(fm, 32, seed=3)
    before = model.heads(*x)
    n = model.unit_counts()[kind]
    keep = torch.tensor([j for j in range(n) if j not in drop])
    params_before = count_params(model)
    model.prune(kind, keep)
    after = model.heads(*x)
    torch.testing.assert_close(after["rating"], before["rating"])
    torch.testing.assert_close(after["score"], before["score"])
    assert model.unit_counts()[kind] == n - len(drop)
    cost = Student(fm, shape=SMALL).unit_cost(kind)
    assert params_before - count_params(model) == len(drop) * cost
    assert count_params(model) == shape_params(fm, model.shape)
    # New tensors, not masks: every parameter has the smaller shape.
    expected = dict(SMALL.as_dict(), **{kind: n - len(drop)})
    assert model.shape.as_dict() == expected


def test_unit_cost_matches_the_parameters_removed() -> None:
    fm = feature_map()
    for kind in UNIT_KINDS:
        model = Student(fm, shape=SMALL)
        cost = model.unit_cost(kind)
        before = count_params(model)
        model.prune(kind, torch.arange(1, model.unit_counts()[kind]))
        assert before - count_params(model) == cost, kind


def test_prune_rejects_bad_requests() -> None:
    model = Student(feature_map(), shape=SMALL)
    with pytest.raises(ValueError, match="unknown unit kind"):
        model.prune("head", torch.tensor([0]))
    with pytest.raises(ValueError, match="non-empty subset"):
        model.prune("user_score_dim", torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="non-empty subset"):
        model.prune("user_rating_dim", torch.tensor([99]))


def test_the_score_head_reads_only_its_block_and_the_rating_head_both() -> None:
    fm = feature_map()
    torch.manual_seed(2)
    model = Student(fm, shape=SMALL)
    x = inputs(fm, 16, seed=4)
    with torch.no_grad():
        before = model.heads(*x)
        for tower in (model.user, model.item):
            tower.tables[0].weight[:, tower.score_dim :] += 1.0
        rating_moved = model.heads(*x)
        for tower in (model.user, model.item):
            tower.tables[0].weight[:, : tower.score_dim] += 1.0
        both_moved = model.heads(*x)
    torch.testing.assert_close(rating_moved["score"], before["score"])
    assert not torch.allclose(rating_moved["rating"], before["rating"])
    assert not torch.allclose(both_moved["score"], rating_moved["score"])
    assert not torch.allclose(both_moved["rating"], rating_moved["rating"])


@pytest.mark.parametrize("weight", [0.0, 0.7])
def test_score_matrix_matches_pairwise_scores(tmp_path: Path, weight: float) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "data", n_users=12, n_items=15, n_ratings=120))
    model = Student(ds.feature_map, shape=SMALL).eval()
    for emb in (model.user_bias, model.item_bias, model.item_score_bias):
        torch.nn.init.normal_(emb.weight)
    users = np.array([1, 5, 12])
    if weight:
        model.rank_with_rating(weight, np.arange(1, 13), ds.tables)
    mat = model.score_matrix(users, ds.tables).detach()
    u = np.repeat(users, 16)
    i = np.tile(np.arange(16), 3)
    _, score = model(*to_inputs(make_batch(ds.tables, u, i)))
    torch.testing.assert_close(mat.reshape(-1), score.detach(), rtol=1e-5, atol=1e-5)


def test_ranking_with_the_rating_adds_its_standardised_rating(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "data", n_users=12, n_items=15, n_ratings=120))
    model = Student(ds.feature_map, shape=SMALL).eval()
    for emb in (model.user_bias, model.item_bias):
        torch.nn.init.normal_(emb.weight)
    batch = to_inputs(make_batch(ds.tables, np.array([1, 4, 9, 12]), np.array([3, 15, 1, 7])))
    before = model.heads(*batch)
    assert not model.ranks_with_rating()
    users = np.arange(1, 13)
    model.rank_with_rating(0.4, users, ds.tables)
    after = model.heads(*batch)

    matrix = model.rating_matrix(users, ds.tables).double()
    assert float(model.rating_score_mean) == pytest.approx(float(matrix.mean()), rel=1e-5)
    assert float(model.rating_score_std) == pytest.approx(float(matrix.std()), rel=1e-5)
    standardised = (before["rating"] - model.rating_score_mean) / model.rating_score_std
    torch.testing.assert_close(after["score"], before["score"] + 0.4 * standardised)
    torch.testing.assert_close(after["rating"], before["rating"])
    assert model.ranks_with_rating()
    # It travels with the state dict, as the exported graph's weights do.
    copy = Student(ds.feature_map, shape=SMALL)
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.eval().heads(*batch)["score"], after["score"])


def test_training_heads_equal_heads_on_lists_that_repeat_users_and_items() -> None:
    fm = feature_map()
    # As in a batch of lists: side features looked up per id, each user over ten rows.
    _, _, user_feats, item_feats, genres = inputs(fm, max(fm.user_vocab, fm.item_vocab))
    g = torch.Generator().manual_seed(2)
    user = torch.randint(0, fm.user_vocab, (4,), generator=g).repeat_interleave(10)
    item = torch.randint(0, fm.item_vocab, (40,), generator=g)
    # In float64, so that the two summation orders agree to far below the tolerance.
    args = (user, item, user_feats[user], item_feats[item], genres[item].double())
    model = Student(fm, shape=SMALL).double()
    for p in model.parameters():  # the zero-initialised biases too
        torch.nn.init.normal_(p, std=0.3)
    catalogue = (item_feats[: fm.item_vocab], genres[: fm.item_vocab].double())

    def shared(*a: torch.Tensor) -> dict[str, torch.Tensor]:
        # As distillation calls it: every item's outputs computed once, for the catalogue.
        return model.training_heads(*a, item_outputs=model.item_outputs(*catalogue))

    outs, grads = [], []
    for heads in (model.heads, model.training_heads, shared):
        model.zero_grad()
        out = heads(*args)
        loss = (out["rating"] ** 2).sum() + out["score"].exp().sum() + out["repr"].pow(3).sum()
        loss.backward()
        outs.append({k: v.detach() for k, v in out.items()})
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    for out, grad in zip(outs[1:], grads[1:], strict=True):
        assert out.keys() == outs[0].keys() and grad.keys() == grads[0].keys()
        for key in out:
            torch.testing.assert_close(out[key], outs[0][key], rtol=1e-10, atol=1e-12)
        for name in grad:
            torch.testing.assert_close(grad[name], grads[0][name], rtol=1e-10, atol=1e-12)


def test_pruned_student_exports_to_onnx_with_parity(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "data", n_users=12, n_items=15, n_ratings=120))
    model = Student(ds.feature_map, shape=SMALL)
    model.prune("user_hidden", torch.tensor([1, 3, 4]))
    model.prune("item_score_dim", torch.tensor([0, 4]))
    model.prune("user_rating_dim", torch.tensor([1, 2]))
    model.eval()
    path = export_onnx(model, ds.feature_map, tmp_path / "student.onnx", metadata={})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = make_batch(ds.tables, np.array([0, 3, 12, 7]), np.array([15, 0, 2, 9]))
    feed = {
        "user": batch.user,
        "item": batch.item,
        "user_feats": batch.user_feats,
        "item_feats": batch.item_feats,
        "item_genres": batch.item_genres,
    }
    rating, score = session.run(["rating", "score"], feed)
    want_rating, want_score = model(*to_inputs(batch))
    np.testing.assert_allclose(rating, want_rating.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(score, want_score.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_student_stage_end_to_end_quick(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "data"))
    split = make_split(ds, split="u1")
    teacher, _ = train_teacher(
        ds, split.train, config=TeacherConfig(progress=False, threads=1).quick()
    )
    config = StudentConfig(quick=True, progress=False, prune_ratio=0.75)
    student, info = distill_student(ds, split.train, teacher, config=config)

    teacher_params = count_params(teacher)
    assert info["teacher_params"] == teacher_params
    # The unpruned student starts at the teacher's size and ends at the target.
    assert info["initial_params"] <= teacher_params
    assert info["initial_params"] > 0.8 * teacher_params
    assert count_params(student) == info["params"] <= 0.25 * teacher_params
    assert info["prune_steps"], "quick mode still prunes"
    for step in info["prune_steps"]:
        assert step["params_after"] < step["params_before"]
    assert len(info["curves"]["total"]) == info["config"]["epochs"]
    assert all(math.isfinite(v) for v in info["curves"]["total"])
    assert {"rating_kd", "ranking_kd", "feature_kd", "gt_rating"} <= set(info["curves"])

    fm = ds.feature_map
    metrics = evaluate_model(
        student,
        ds.tables,
        train=split.train,
        test=split.test,
        n_users=fm.n_users,
        n_items=fm.n_items,
    )
    constant = rating_metrics(
        np.full(len(split.test), split.train.rating.mean()), split.test.rating
    )
    # The planted data has strong user/item effects: anything that learned beats the mean.
    assert metrics["rmse"] < constant["rmse"]
    assert 0.0 <= metrics["ndcg@10"] <= 1.0

    report = fisher_report(
        teacher,
        ds,
        split.train,
        examples=config.fisher_examples,
        positives=config.list_positives,
        negatives=config.list_negatives,
        temperature=config.temperature,
        chunk=config.fisher_chunk,
        seed=config.seed,
    )
    for loss in ("rating", "ranking", "distill"):
        components = {row["component"] for row in report["layers"][loss]}
        assert components == {"mf", "xdeepfm", "autoint"}
        assert all(row["fisher_trace"] >= 0 for row in report["layers"][loss])
        assert sum(row["params"] for row in report["layers"][loss]) == teacher_params
        kinds = {row["kind"] for row in report["units"][loss]}
        assert {"embedding_dim", "neuron", "feature_map", "attention_head"} <= kinds

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "student.md").write_text(
        f"# Hand-written\n\nkeep me\n\n{RESULTS_BEGIN}\nOLD-SECTION\n{RESULTS_END}\n\ntail\n"
    )
    curve = [
        {
            "ratio": r,
            "fold": "u1",
            "params": 100 - 50 * r,
            "latency_ms_1": 1.0 - r,
            "rmse": 0.9 + r / 10,
            "ndcg@10": 0.3 - r / 10,
        }
        for r in (0.0, 0.5, 0.9)
    ]
    path = write_student_report(
        {"fisher": {"report": report}, "student": {"info": info}, "curve": curve}, docs
    )
    text = path.read_text()
    assert text.startswith("# Hand-written\n\nkeep me") and text.rstrip().endswith("tail")
    assert "OLD-SECTION" not in text and "Pruning curve" in text and "Fisher sensitivity" in text
    for png in ("fisher.png", "losses.png", "pruning_curve.png"):
        assert (docs / "student" / png).stat().st_size > 1000
