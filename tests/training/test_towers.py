"""The two-stage form of a model: user tower graph, item matrix and ANN index agree with
the full model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contract.towers import lift_query
from training.ann import TAIL_SHARE, build_ivf, exact_top, query_recalls, recall_at
from training.data import Dataset, load_dataset
from training.models.autoint import AutoInt
from training.models.base import TwoHeadModel
from training.models.ensemble import EnsembleTeacher
from training.models.mf import BiasedMF
from training.models.student import Student, StudentShape
from training.models.xdeepfm import XDeepFM
from training.towers import TOWER_OUTPUT, TowerArtifacts, export_towers, sample_queries


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


def _teacher(ds: Dataset) -> EnsembleTeacher:
    fm = ds.feature_map
    torch.manual_seed(0)
    teacher = EnsembleTeacher(
        BiasedMF(fm, dim=8, score_dim=6),
        XDeepFM(fm, dim=4, cin_layers=(5, 3), dnn_layers=(7,), score_dim=6, tower_layers=(9,)),
        AutoInt(fm, dim=4, layers=2, heads=2, d_head=3, score_dim=6),
    ).eval()
    teacher.standardise(np.arange(1, fm.n_users + 1), ds.tables)
    teacher.set_weights(rating=[0.5, 0.3, 0.2], rating_bias=0.0, score=[0.2, 0.3, 0.5])
    return teacher


def _export(
    model: TwoHeadModel, ds: Dataset, out: Path, *, stem: str, ann_min_items: int = 10**9
) -> TowerArtifacts:
    """The model's towers as export writes them (no ANN index unless `ann_min_items` is low)."""
    return export_towers(
        model,
        ds.tables,
        ds.feature_map,
        out_dir=out,
        stem=stem,
        metadata={"bundle_version": "v"},
        ann_min_items=ann_min_items,
    )


def test_tower_scores_equal_the_full_graph(dataset: Dataset, tmp_path: Path) -> None:
    teacher = _teacher(dataset)
    art = _export(teacher, dataset, tmp_path, stem="teacher", ann_min_items=10)
    items = np.load(art.items)
    assert items.shape == (dataset.feature_map.n_items, art.dim)
    assert art.parity_max_abs_diff <= 1e-4
    # The full model's catalogue ranking is the tower ranking.
    user = np.array([3], np.int64)
    session = ort.InferenceSession(str(art.user_tower), providers=["CPUExecutionProvider"])
    (vector,) = session.run(
        [TOWER_OUTPUT], {"user": user, "user_feats": dataset.tables.user_feats[user]}
    )
    with torch.no_grad():
        full = teacher.score_matrix(user, dataset.tables).numpy()[0, 1:]
    assert np.max(np.abs(items @ vector[0] - full)) <= 1e-4
    assert art.ann is not None and art.ann_info is not None
    assert art.ann_info.recall_at_10 >= 0.9


def test_the_tuning_queries_hold_cold_start_vectors(dataset: Dataset, tmp_path: Path) -> None:
    art = _export(_teacher(dataset), dataset, tmp_path, stem="teacher")
    queries = sample_queries(art.user_tower, dataset.tables, dataset.feature_map, seed=0)
    rng = np.random.default_rng(0)  # sample_queries' draw of users
    users = rng.integers(1, dataset.feature_map.n_users + 1, 512)
    cold_feats = np.unique(dataset.tables.user_feats[users], axis=0)
    assert queries.shape == (512 + cold_feats.shape[0], art.dim) and cold_feats.shape[0] > 1
    session = ort.InferenceSession(str(art.user_tower), providers=["CPUExecutionProvider"])
    zeros = np.zeros(cold_feats.shape[0], np.int64)
    (cold,) = session.run([TOWER_OUTPUT], {"user": zeros, "user_feats": cold_feats})
    np.testing.assert_allclose(queries[512:], cold, rtol=1e-6)


@pytest.mark.parametrize("lift", [True, False])
def test_ivf_recall_on_a_generated_matrix(lift: bool) -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16)).astype(np.float32)
    vectors = centers[rng.integers(0, 40, 20_000)] + 0.3 * rng.normal(size=(20_000, 16))
    vectors = (vectors * rng.uniform(0.5, 2.0, size=(20_000, 1))).astype(np.float32)
    queries = rng.normal(size=(200, 16)).astype(np.float32)
    index, info = build_ivf(vectors, queries, target=0.98, lift=lift)
    assert index.d == (17 if lift else 16)
    assert info.kind == ("ivf_flat_sphere" if lift else "ivf_flat")
    fresh = rng.normal(size=(200, 16)).astype(np.float32)
    searched = lift_query(fresh) if lift else fresh
    assert recall_at(index, exact_top(vectors, fresh, 10), searched, 10) >= 0.95
    assert info.recall_at_10 >= 0.98 and 1 <= info.nprobe <= info.nlist
    # The tail rule: few sample queries far below the mean, or every list probed.
    assert info.share_under_tail <= TAIL_SHARE or info.nprobe == info.nlist


def test_exact_top_in_chunks_equals_a_full_sort() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    queries = rng.normal(size=(150, 8)).astype(np.float32)  # more rows than one chunk
    want = np.argsort(-(queries.astype(np.float64) @ vectors.T.astype(np.float64)), axis=1)
    assert exact_top(vectors, queries, 5).tolist() == want[:, :5].tolist()


def test_query_recalls_counts_each_querys_overlap() -> None:
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)  # top 2: {0, 1} and {2, 3}
    index, _ = build_ivf(vectors, queries, nlist=1, k=2, lift=False)  # one list: exact
    assert exact_top(vectors, queries, 2).tolist() == [[0, 1], [2, 3]]
    got = query_recalls(index, np.array([[0, 1], [2, 0]]), queries, 2)
    assert got.tolist() == [1.0, 0.5]


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_student_towers_equal_its_score_head(
    dataset: Dataset, tmp_path: Path, weight: float
) -> None:
    torch.manual_seed(1)
    shape = StudentShape()
    student = Student(dataset.feature_map, shape=shape).eval()
    with torch.no_grad():
        for emb in (student.item_score_bias, student.user_bias, student.item_bias):
            torch.nn.init.normal_(emb.weight)
    if weight:
        student.rank_with_rating(weight, np.arange(1, 40), dataset.tables)
    art = _export(student, dataset, tmp_path, stem="student")
    assert art.ann is None and art.parity_max_abs_diff <= 1e-4
    # Ranking with the rating adds its factors and two constant columns to the vectors.
    extra = shape.rating_factor + 1 if weight else 0
    assert art.dim == shape.score_factor + 1 + extra
    users = np.array([1, 5], np.int64)
    with torch.no_grad():
        full = student.score_matrix(users, dataset.tables).numpy()[:, 1:]
        vectors = student.user_tower(
            torch.as_tensor(users), torch.as_tensor(dataset.tables.user_feats[users])
        ).numpy()
    np.testing.assert_allclose(vectors @ np.load(art.items).T, full, atol=1e-4)
