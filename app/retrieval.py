"""First stage of /recommend: top-N items by inner product with the user's tower vector.

Both variants score `user_vector · item_vector`, so ranking the catalogue is a
maximum-inner-product search over the bundle's precomputed item matrix. Small catalogues
use an exact search (one matrix-vector product and `argpartition`); large ones an IVF
index (FAISS) shipped in the bundle, over-fetching so that seen items can be dropped and
falling back to an exact search in the rare case that leaves fewer than k items.

An IVF-Flat index stores every item vector itself, so when it serves, the item matrix is
not loaded at all (half the retrieval memory): the exact fallback searches the index with
every list probed and the excluded items filtered out by an ID selector, which scans the
same vectors a matrix-vector product would.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from contract.errors import BundleError
from contract.manifest import RetrievalEntry
from contract.towers import SPHERE_KIND, lift_query, load_item_matrix

logger = logging.getLogger(__name__)

Mode = Literal["auto", "exact", "ann"]
Floats = npt.NDArray[np.float32]
Positions = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Hits:
    """Catalogue positions (item index - 1), best first, and their inner products."""

    positions: Positions
    scores: Floats
    exact: bool


class Searcher(Protocol):
    def search(self, query: Floats, n: int) -> tuple[Positions, Floats]:
        """The n best positions for one [D] query, best first."""
        ...

    def exhaustive(self, query: Floats, n: int, *, exclude: Positions | None) -> Hits:
        """The exact n best positions not in `exclude`, best first."""
        ...


def top_k(score: Floats, k: int, *, exclude: Positions | None = None) -> Positions:
    """Positions of the k best finite scores, best first (ties: the lower position first);
    `exclude` are never returned.

    `score` is modified in place when `exclude` is given (callers pass a fresh array).
    """
    if exclude is not None and exclude.size:
        score[exclude] = -np.inf
    n = score.shape[0]
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    # The k largest from the top of a partition: no negated copy of the whole vector,
    # which on a small catalogue costs as much as the search itself.
    candidates = np.sort(np.argpartition(score, n - k)[n - k :]) if k < n else np.arange(n)
    order = candidates[np.argsort(-score[candidates], kind="stable")]
    if not np.isfinite(score[order]).all():  # excluded (or unusable) items made the cut
        order = order[np.isfinite(score[order])]
    return order.astype(np.int64, copy=False)


class ExactSearcher:
    """Brute force: one BLAS matrix-vector product over the item matrix."""

    def __init__(self, vectors: Floats) -> None:
        self.vectors = vectors  # [N, D], read-only, shared by all requests

    def scores(self, query: Floats) -> Floats:
        return np.asarray(self.vectors @ query, dtype=np.float32)  # [N]

    def search(self, query: Floats, n: int) -> tuple[Positions, Floats]:
        score = self.scores(query)
        positions = top_k(score, n)
        return positions, score[positions]


class FaissSearcher:
    """An inner-product FAISS index read from the bundle; `nprobe` from the manifest.

    A `lifted` index (kind ivf_flat_sphere) holds the items with one more column and is
    searched with the query padded by a zero: the inner products it returns are the
    items' own.
    """

    def __init__(self, path: Path, *, nprobe: int, dim: int, rows: int, lifted: bool) -> None:
        import faiss  # noqa: PLC0415 - only bundles with an ANN index need FAISS loaded

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:  # FAISS reports every read failure as RuntimeError
            raise BundleError(f"{path.name} is not a readable FAISS index: {exc}") from exc
        want_dim = dim + 1 if lifted else dim
        if index.d != want_dim or index.ntotal != rows:
            raise BundleError(
                f"{path.name} holds {index.ntotal} vectors of dimension {index.d}, "
                f"its manifest entry says {rows} of {want_dim}"
            )
        if not isinstance(index, faiss.IndexIVFFlat):
            # Only a flat IVF holds the full vectors the exact fallback needs.
            raise BundleError(f"{path.name} is not an IVF-Flat index")
        index.nprobe = nprobe
        self.index = index
        self._nlist = int(index.nlist)
        self._faiss = faiss
        self._lifted = lifted

    def _query(self, query: Floats) -> Floats:
        row = query.reshape(1, -1)
        return lift_query(row) if self._lifted else row

    def search(self, query: Floats, n: int) -> tuple[Positions, Floats]:
        scores, ids = self.index.search(self._query(query), n)
        return _valid(ids[0], scores[0])

    def exhaustive(self, query: Floats, n: int, *, exclude: Positions | None) -> Hits:
        faiss = self._faiss
        selector = None
        if exclude is not None and exclude.size:
            selector = faiss.IDSelectorNot(faiss.IDSelectorBatch(exclude.astype(np.int64)))
        params = faiss.SearchParametersIVF(nprobe=self._nlist, sel=selector)
        scores, ids = self.index.search(self._query(query), n, params=params)
        positions, found = _valid(ids[0], scores[0])
        return Hits(positions=positions, scores=found, exact=True)


def _valid(ids: npt.NDArray[np.int64], scores: Floats) -> tuple[Positions, Floats]:
    """FAISS pads a result with id -1 when fewer vectors qualify."""
    keep = ids >= 0
    return ids[keep].astype(np.int64), scores[keep].astype(np.float32)


@dataclass(frozen=True)
class Retriever:
    """One variant's first stage: exact search over the item matrix, or the ANN index
    (which then answers the exact fallback too, and the matrix is not held)."""

    exact: ExactSearcher | None
    ann: Searcher | None
    use_ann: bool
    candidates: int
    n_items: int

    @property
    def nbytes(self) -> int:
        """Bytes of the item matrix held in memory (0 when the index holds the vectors)."""
        return 0 if self.exact is None else int(self.exact.vectors.nbytes)

    def retrieve(self, query: Floats, k: int, *, exclude: Positions | None = None) -> Hits:
        """The k best positions not in `exclude` (sorted or not), best first.

        Never fewer than k when the catalogue has k items outside `exclude`.
        """
        n_excluded = 0 if exclude is None else int(exclude.size)
        if self.ann is not None and self.use_ann:
            fetch = min(self.n_items, max(self.candidates, k + n_excluded))
            positions, scores = self.ann.search(query, fetch)
            if exclude is not None and n_excluded:
                keep = ~np.isin(positions, exclude)
                positions, scores = positions[keep], scores[keep]
            if positions.size >= min(k, self.n_items - n_excluded):
                return Hits(positions=positions[:k], scores=scores[:k], exact=False)
            logger.debug("ANN left fewer than k unseen items; exact search instead")
        if self.exact is None:
            assert self.ann is not None  # open_retriever drops the matrix only for an index
            return self.ann.exhaustive(query, k, exclude=exclude)
        score = self.exact.scores(query)
        positions = top_k(score, k, exclude=exclude)
        return Hits(positions=positions, scores=score[positions], exact=True)


def choose_ann(mode: Mode, *, n_items: int, threshold: int, has_index: bool) -> bool:
    """Whether to search with the ANN index: `auto` uses it above `threshold` items."""
    if mode == "exact":
        return False
    if mode == "ann":
        if not has_index:
            logger.warning("RETRIEVAL=ann but the bundle has no ANN index: exact search")
        return has_index
    return has_index and n_items > threshold


@dataclass(frozen=True)
class RetrievalSettings:
    mode: Mode = "auto"
    candidates: int = 200
    ann_threshold: int = 50_000
    # Threads of one search (BLAS for exact, OpenMP for FAISS). 1: requests already run in
    # parallel, and a multi-threaded matrix-vector product per request only adds contention.
    threads: int = 1
    # Known users' query vectors are precomputed at load when they take at most this.
    user_vectors_mb: float = 256.0


def limit_search_threads(threads: int) -> None:
    """Caps the BLAS and OpenMP thread pools of this process (the searches' libraries)."""
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - called once, at start-up

    threadpool_limits(limits=threads)
    if importlib.util.find_spec("faiss") is not None:
        import faiss  # noqa: PLC0415

        faiss.omp_set_num_threads(threads)


def open_retriever(
    directory: Path, entry: RetrievalEntry, *, n_items: int, settings: RetrievalSettings
) -> Retriever:
    """The variant's ANN index when chosen, else its item matrix (checked against the
    manifest); the bundle's verification has checked both files' hashes already."""
    use_ann = choose_ann(
        settings.mode,
        n_items=n_items,
        threshold=settings.ann_threshold,
        has_index=entry.ann is not None,
    )
    ann: Searcher | None = None
    exact: ExactSearcher | None = None
    if use_ann and entry.ann is not None:
        ann = FaissSearcher(
            directory / entry.ann.file,
            nprobe=entry.ann.nprobe,
            dim=entry.items.dim,
            rows=n_items,
            lifted=entry.ann.kind == SPHERE_KIND,
        )
    else:
        exact = ExactSearcher(
            load_item_matrix(directory / entry.items.file, entry.items, n_items=n_items)
        )
    logger.info(
        "retrieval ready",
        extra={
            "file": entry.items.file,
            "items": n_items,
            "dim": entry.items.dim,
            "method": "ann" if ann is not None else "exact",
            "item_matrix_in_memory": exact is not None,
            "nprobe": entry.ann.nprobe if entry.ann is not None else None,
            "ann_recall@10": entry.ann.recall_at_10 if entry.ann is not None else None,
        },
    )
    return Retriever(
        exact=exact,
        ann=ann,
        use_ann=ann is not None,
        candidates=settings.candidates,
        n_items=n_items,
    )
