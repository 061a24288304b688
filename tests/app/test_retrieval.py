"""First-stage retrieval: exact search equals brute force, ANN keeps recall, seen items
never come back and k unseen items always do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.retrieval import (
    ExactSearcher,
    FaissSearcher,
    RetrievalSettings,
    Retriever,
    choose_ann,
    open_retriever,
    top_k,
)
from contract.manifest import RetrievalEntry
from contract.towers import lift_items


def _brute(vectors: np.ndarray, query: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    score = vectors.astype(np.float64) @ query.astype(np.float64)
    order = sorted(range(len(score)), key=lambda j: (-score[j], j))
    return [j for j in order if j not in exclude][:k]


def _retriever(
    vectors: np.ndarray, ann: object = None, *, candidates: int = 50, matrix: bool = True
) -> Retriever:
    return Retriever(
        exact=ExactSearcher(vectors) if matrix else None,
        ann=ann,  # type: ignore[arg-type]
        use_ann=ann is not None,
        candidates=candidates,
        n_items=vectors.shape[0],
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(300, 8)).astype(np.float32)
    query = rng.normal(size=8).astype(np.float32)
    exclude = np.sort(rng.choice(300, size=40, replace=False)).astype(np.int64)
    hits = _retriever(vectors).retrieve(query, 10, exclude=exclude)
    assert hits.positions.tolist() == _brute(vectors, query, 10, set(exclude.tolist()))
    np.testing.assert_allclose(hits.scores, vectors[hits.positions] @ query, rtol=1e-5)


def test_ties_keep_the_lower_position_first() -> None:
    vectors = np.ones((6, 2), np.float32)
    hits = _retriever(vectors).retrieve(np.ones(2, np.float32), 3)
    assert sorted(hits.positions.tolist()) == hits.positions.tolist()
    assert len(set(hits.positions.tolist())) == 3


def test_k_larger_than_unseen_and_all_seen() -> None:
    vectors = np.eye(5, dtype=np.float32)
    retriever = _retriever(vectors)
    hits = retriever.retrieve(np.ones(5, np.float32), 10, exclude=np.array([0, 2]))
    assert sorted(hits.positions.tolist()) == [1, 3, 4]
    everything = retriever.retrieve(np.ones(5, np.float32), 3, exclude=np.arange(5))
    assert everything.positions.size == 0


def test_top_k_drops_excluded_and_orders_best_first() -> None:
    score = np.array([0.1, 0.9, 0.5, 0.7], np.float32)
    assert top_k(score.copy(), 2).tolist() == [1, 3]
    assert top_k(score.copy(), 4, exclude=np.array([1])).tolist() == [3, 2, 0]


IVF = tuple[np.ndarray, Path, bool]


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "lifted"])
def ivf(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> IVF:
    """Clustered vectors of spread norms in an inner-product IVF-Flat index, as export
    writes it (lifted onto a sphere) or as older bundles hold it (plain)."""
    faiss = pytest.importorskip("faiss")
    lifted: bool = request.param
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 16))
    vectors = centers[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 16))
    vectors = (vectors * rng.uniform(0.5, 2.0, size=(20_000, 1))).astype(np.float32)
    stored = lift_items(vectors) if lifted else vectors
    quantizer = faiss.IndexFlatIP(stored.shape[1])
    index = faiss.IndexIVFFlat(quantizer, stored.shape[1], 64, faiss.METRIC_INNER_PRODUCT)
    index.train(stored)
    index.add(stored)
    path = tmp_path_factory.mktemp("ann") / "items.ivf"
    faiss.write_index(index, str(path))
    return vectors, path, lifted


def test_ann_recall_and_seen_exclusion(ivf: IVF) -> None:
    vectors, path, lifted = ivf
    searcher = FaissSearcher(path, nprobe=16, dim=16, rows=vectors.shape[0], lifted=lifted)
    retriever = _retriever(vectors, searcher, candidates=100)
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(50):
        query = rng.normal(size=16).astype(np.float32)
        truth = _brute(vectors, query, 10, set())
        exclude = np.array(sorted(truth[:3]), np.int64)
        got = retriever.retrieve(query, 10, exclude=exclude)
        assert not set(got.positions.tolist()) & set(exclude.tolist())
        assert got.positions.size == 10
        np.testing.assert_allclose(got.scores, vectors[got.positions] @ query, rtol=1e-4)
        hits += len(set(got.positions.tolist()) & set(truth[3:]))
    assert hits / (50 * 7) >= 0.9


def test_the_manifest_kind_says_how_the_index_is_searched(ivf: IVF) -> None:
    """`ivf_flat_sphere` (export now) pads the query; `ivf_flat` (older bundles) does not;
    the wrong kind for a file is refused, never searched with the wrong dimension."""
    vectors, path, lifted = ivf
    ref = {"sha256": "0" * 64}
    entry: dict[str, Any] = {
        "user_tower": {"file": "t.onnx", **ref},
        "items": {"file": "i.npy", **ref, "rows": vectors.shape[0], "dim": 16},
        "ann": {"file": path.name, **ref, "nlist": 64, "nprobe": 16, "recall@10": 0.99},
        "parity_max_abs_diff": 0.0,
    }
    settings = RetrievalSettings(mode="ann")
    for kind in ("ivf_flat", "ivf_flat_sphere"):
        parsed = RetrievalEntry.model_validate({**entry, "ann": {**entry["ann"], "kind": kind}})
        if (kind == "ivf_flat_sphere") != lifted:
            with pytest.raises(ValueError, match="vectors of dimension"):
                open_retriever(path.parent, parsed, n_items=vectors.shape[0], settings=settings)
            continue
        retriever = open_retriever(path.parent, parsed, n_items=vectors.shape[0], settings=settings)
        query = np.random.default_rng(5).normal(size=16).astype(np.float32)
        got = retriever.retrieve(query, 10)
        assert retriever.use_ann and not got.exact and got.positions.size == 10
        np.testing.assert_allclose(got.scores, vectors[got.positions] @ query, rtol=1e-4)


def test_ann_refuses_a_mismatched_matrix(ivf: IVF) -> None:
    vectors, path, lifted = ivf
    with pytest.raises(ValueError, match="vectors of dimension"):
        FaissSearcher(path, nprobe=4, dim=8, rows=vectors.shape[0], lifted=lifted)
    # The same index read as the other kind: one column more or less than it holds.
    with pytest.raises(ValueError, match="vectors of dimension"):
        FaissSearcher(path, nprobe=4, dim=16, rows=vectors.shape[0], lifted=not lifted)


@pytest.mark.parametrize("matrix", [True, False])
def test_ann_falls_back_to_exact_when_seen_items_fill_the_candidates(
    ivf: IVF, matrix: bool
) -> None:
    """With or without the item matrix in memory: without it, the index answers."""
    vectors, path, lifted = ivf
    searcher = FaissSearcher(path, nprobe=1, dim=16, rows=vectors.shape[0], lifted=lifted)
    retriever = _retriever(vectors, searcher, candidates=20, matrix=matrix)
    query = np.ones(16, np.float32)
    exclude = np.arange(0, 19_995, dtype=np.int64)
    hits = retriever.retrieve(query, 10, exclude=exclude)
    assert hits.exact and sorted(hits.positions.tolist()) == list(range(19_995, 20_000))


def test_the_index_alone_gives_the_exact_answer(ivf: IVF) -> None:
    vectors, path, lifted = ivf
    searcher = FaissSearcher(path, nprobe=1, dim=16, rows=vectors.shape[0], lifted=lifted)
    rng = np.random.default_rng(3)
    for _ in range(5):
        query = rng.normal(size=16).astype(np.float32)
        exclude = np.sort(rng.choice(vectors.shape[0], size=500, replace=False))
        got = searcher.exhaustive(query, 10, exclude=exclude.astype(np.int64))
        assert got.exact
        assert got.positions.tolist() == _brute(vectors, query, 10, set(exclude.tolist()))
        np.testing.assert_allclose(got.scores, vectors[got.positions] @ query, rtol=1e-4)


def test_ann_refuses_an_index_without_the_vectors(tmp_path: Path) -> None:
    faiss = pytest.importorskip("faiss")
    index = faiss.IndexHNSWFlat(16, 8, faiss.METRIC_INNER_PRODUCT)
    index.add(np.random.default_rng(0).normal(size=(100, 16)).astype(np.float32))
    faiss.write_index(index, str(tmp_path / "items.hnsw"))
    with pytest.raises(ValueError, match="not an IVF-Flat index"):
        FaissSearcher(tmp_path / "items.hnsw", nprobe=4, dim=16, rows=100, lifted=False)


def test_choose_ann() -> None:
    assert not choose_ann("exact", n_items=10**6, threshold=10, has_index=True)
    assert choose_ann("ann", n_items=10, threshold=10**6, has_index=True)
    assert not choose_ann("ann", n_items=10, threshold=1, has_index=False)
    assert choose_ann("auto", n_items=100, threshold=50, has_index=True)
    assert not choose_ann("auto", n_items=40, threshold=50, has_index=True)
