"""The approximate inner-product index shipped in a bundle for large catalogues.

IVF-Flat (FAISS) rather than HNSW: its memory is the vectors plus one id per item, where
HNSW adds about 2*M links per item (for M=32, 256 bytes: more than a 16-d student vector
itself), which would erase the student's memory advantage. The items are lifted onto a
sphere first (contract.towers.lift_items: one more column), so that the inner-product
search clusters well whatever the spread of the vectors' norms. `nprobe` is chosen at
build time as the smallest value whose mean recall@k against exact search on sample
queries (known users and cold-start vectors: training/towers.py) reaches the target while
few of them fall far below it: a probe more costs microseconds, and a user whose list
misses most of its true top items is a bad answer however good the mean. It is recorded
in the manifest with the measured recall.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from contract.towers import SPHERE_KIND, lift_items, lift_query

log = logging.getLogger(__name__)

RECALL_TARGET = 0.99
RECALL_K = 10
# ... and at most TAIL_SHARE of the sample queries may find under TAIL_RECALL of their top k.
TAIL_RECALL = 0.8
TAIL_SHARE = 0.01
NPROBES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


@dataclass(frozen=True)
class KMeans:
    """How the coarse quantizer's lists are trained: on `per_list` sample vectors per list
    for `niter` iterations. Each iteration assigns every sample vector to its nearest of
    `nlist` centroids, so the cost is niter x per_list x nlist^2 x dim.

    64 per list, not FAISS's 256: on the million-item catalogue (4,000 lists; the teacher's
    260-dim vectors) its index took 448 s to build with 256 and 158 s with 64, nprobe 1 and
    held-out recall@10 1.000 (`python -m bench.ann_train`, bench/results/ann-train/). 64 is
    inside FAISS's advised 39-256 per centroid, and a catalogue whose lists come out
    worse pays in nprobe, which export tunes to the recall target, not in recall."""

    per_list: int = 64
    niter: int = 10  # FAISS's default for an IVF's lists (25 for its plain Clustering)


_EXACT_CHUNK = 64  # query rows scored at once by exact_top (64 x 10^6 floats: 256 MB)
_SEED = 1234


@dataclass(frozen=True)
class AnnInfo:
    kind: str
    nlist: int
    nprobe: int
    recall_at_10: float
    share_under_tail: float
    build_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "recall@10": round(self.recall_at_10, 4),
            f"share_under_recall_{TAIL_RECALL}": round(self.share_under_tail, 4),
            "build_seconds": round(self.build_seconds, 2),
        }


def default_nlist(n: int) -> int:
    # About 4 * sqrt(N) lists: FAISS's guideline for IVF between 1e4 and 1e7 vectors.
    return max(1, min(n // 39, int(4 * math.sqrt(n))))


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best inner products per query row, best first: [Q, k].

    Queries go in chunks, so that a million-item catalogue never holds more than
    _EXACT_CHUNK x N scores at once."""
    tops = [
        _exact_top(vectors, queries[start : start + _EXACT_CHUNK], k)
        for start in range(0, queries.shape[0], _EXACT_CHUNK)
    ]
    return np.concatenate(tops) if tops else np.empty((0, k), dtype=np.int64)


def _exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ vectors.T  # [q, N]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), 1), 1)


def query_recalls(index: faiss.Index, truth: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Recall@k of each query row against its `truth` row: [Q]."""
    _, found = index.search(queries, k)
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return np.asarray(hits, dtype=np.float64) / truth.shape[1]


def recall_at(index: faiss.Index, truth: np.ndarray, queries: np.ndarray, k: int) -> float:
    return float(query_recalls(index, truth, queries, k).mean())


def build_ivf(
    vectors: np.ndarray,
    queries: np.ndarray,
    *,
    nlist: int | None = None,
    target: float = RECALL_TARGET,
    k: int = RECALL_K,
    lift: bool = True,
    kmeans: KMeans = KMeans(),
) -> tuple[faiss.IndexIVFFlat, AnnInfo]:
    """IVF-Flat inner-product index over `vectors` [N, D], lifted onto a sphere unless
    `lift` is false (the plain index, kind `ivf_flat`, for comparison); lists trained as
    `kmeans` says, nprobe tuned on `queries` [Q, D]. A lifted index takes
    `lift_query(queries)`."""
    started = time.perf_counter()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = vectors.shape[0]
    k = min(k, n)
    truth = exact_top(vectors, queries, k)
    if lift:
        vectors, queries = lift_items(vectors), lift_query(queries)
    dim = vectors.shape[1]
    nlist = nlist or default_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = kmeans.niter
    index.cp.max_points_per_centroid = max(kmeans.per_list, 1)  # no second subsampling
    rng = np.random.default_rng(_SEED)
    sample = vectors[rng.choice(n, size=min(n, nlist * kmeans.per_list), replace=False)]
    index.train(sample)
    index.add(vectors)
    recall, tail = 0.0, 1.0
    for nprobe in NPROBES:
        index.nprobe = min(nprobe, nlist)
        found = query_recalls(index, truth, queries, k)
        recall, tail = float(found.mean()), float(np.mean(found < TAIL_RECALL))
        if (recall >= target and tail <= TAIL_SHARE) or nprobe >= nlist:
            break
    info = AnnInfo(
        kind=SPHERE_KIND if lift else "ivf_flat",
        nlist=nlist,
        nprobe=int(index.nprobe),
        recall_at_10=recall,
        share_under_tail=tail,
        build_seconds=time.perf_counter() - started,
    )
    log.info("ANN index: %s", info.as_dict())
    return index, info


def write_index(index: faiss.Index, path: Path) -> None:
    faiss.write_index(index, str(path))
