"""The two-stage form of each served model (manifest schema 2).

Beside its pair graph (rating and score for given pairs), every served variant ships
- a user-tower graph: `user` [B] int64 and `user_feats` [B, Fu] int64 in,
  `user_vector` [B, D] float32 out;
- its item matrix: float32 [n_items, D] as `.npy`, row j is item index j + 1, so that the
  pair graph's `score` of (u, i) equals `user_vector(u) · items[i - 1]` (checked at export);
- for large catalogues an inner-product ANN index (FAISS IVF-Flat) over that matrix, with
  the `nprobe` chosen at export and the recall@10 it measured. Kind `ivf_flat_sphere`
  indexes the items lifted onto a sphere (`lift_items`), and is searched with the user
  vector padded by a zero (`lift_query`); kind `ivf_flat` (older bundles) the items as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from contract.errors import BundleError, ModelLoadError
from contract.manifest import ItemMatrixRef, MatrixRef
from contract.session import CPU, session_options
from contract.signature import INPUT_TYPES

TOWER_INPUT_NAMES = ("user", "user_feats")
SPHERE_KIND = "ivf_flat_sphere"
TOWER_OUTPUT = "user_vector"


def tower_files(key: str) -> dict[str, str]:
    """File names of model `key`'s tower graph, item matrix and ANN index."""
    return {
        "user_tower": f"{key}.user_tower.onnx",
        "items": f"{key}.items.npy",
        "ann": f"{key}.ivf",
    }


def check_tower_signature(
    inputs: Mapping[str, str], outputs: Sequence[str], *, file: str
) -> tuple[str, ...]:
    """The tower graph's inputs in contract order; ModelLoadError if it breaks the contract."""
    want = {name: INPUT_TYPES[name] for name in TOWER_INPUT_NAMES}
    if dict(inputs) != want or TOWER_OUTPUT not in outputs:
        raise ModelLoadError(
            f"{file} has inputs {dict(inputs)} and outputs {list(outputs)}; a user tower takes "
            f"{want} and gives {TOWER_OUTPUT!r}"
        )
    return TOWER_INPUT_NAMES


def lift_items(vectors: np.ndarray) -> np.ndarray:
    """[N, D] -> [N, D + 1]: each row x gets sqrt(M^2 - |x|^2), M the largest row norm.

    Every lifted row has norm M, and a query padded with 0 has the same inner product with
    it as with x, so the maximum-inner-product search becomes a search on a sphere, where
    IVF's clusters are tight (Bachrach et al. 2014, the Xbox recommender's transform).
    Unlifted, inner-product k-means lets the items of large norm dominate the lists a query
    probes (bench/results/ann-lift: at 10^5 synthetic items the student's vectors needed
    128 of 1,264 lists for recall@10 0.99, lifted 1).
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    # Squares summed in float64: the pad is the root of a difference of squares.
    norms2 = np.einsum("nd,nd->n", vectors, vectors, dtype=np.float64)
    lifted = np.empty((n, dim + 1), dtype=np.float32)
    lifted[:, :dim] = vectors
    lifted[:, dim] = np.sqrt(np.maximum(norms2.max(initial=0.0) - norms2, 0.0))
    return lifted


def lift_query(queries: np.ndarray) -> np.ndarray:
    """[..., D] -> [..., D + 1]: the query side of `lift_items` (a zero appended)."""
    pad = np.zeros((*queries.shape[:-1], 1), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate([queries, pad], axis=-1), dtype=np.float32)


def load_matrix(path: Path, ref: MatrixRef, *, rows: int) -> np.ndarray:
    """A float32 matrix of the bundle, checked against its manifest entry and the `rows`
    the bundle's data say it has; read-only."""
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BundleError(f"{path.name} is not a readable .npy file: {exc}") from exc
    expected = (rows, ref.dim)
    if matrix.dtype != np.float32 or matrix.shape != expected or ref.rows != rows:
        raise BundleError(
            f"{path.name} is {matrix.dtype} {matrix.shape}; the manifest and catalogue say "
            f"float32 {expected}"
        )
    if not np.isfinite(matrix).all():
        raise BundleError(f"{path.name} holds NaN or infinite values")
    matrix = np.ascontiguousarray(matrix)
    matrix.setflags(write=False)
    return matrix


def load_item_matrix(path: Path, ref: ItemMatrixRef, *, n_items: int) -> np.ndarray:
    """The item matrix, checked against its manifest entry and the catalogue; read-only."""
    return load_matrix(path, ref, rows=n_items)


def open_tower_session(
    path: Path, *, providers: Sequence[str] = (CPU,), intra_op_threads: int = 0
) -> ort.InferenceSession:
    """An InferenceSession on a user-tower graph whose signature passed the contract."""
    options = session_options(intra_op_threads=intra_op_threads)
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises several unrelated types
        raise ModelLoadError(f"cannot load {Path(path).name}: {exc}") from exc
    check_tower_signature(
        {node.name: node.type for node in session.get_inputs()},
        [node.name for node in session.get_outputs()],
        file=Path(path).name,
    )
    return session
