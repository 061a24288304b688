"""The bundle's folder layout: file names, the `current` link, and file hashing.

docs/contracts.md section 2 describes each file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

MANIFEST = "manifest.json"
CURRENT = "current"
MODEL_FILES = {
    "teacher": "teacher.onnx",
    "student": "student.onnx",
    "student_int8": "student.int8.onnx",
}
# Each model's pair graph cut to its `rating` output: what the service runs for ratings
# (retrieval gives the scores), without the score towers' nodes.
RATING_GRAPH_FILES = {
    key: name.removesuffix(".onnx") + ".rating.onnx" for key, name in MODEL_FILES.items()
}
REQUIRED_MODELS = ("teacher", "student")
DATA_FILES = {
    "feature_map": "feature_map.json",
    "id_maps": "id_maps.json",
    "features": "features.npz",
    "seen": "seen.npz",
    "items": "items.json",
    "popular": "popular.json",
    "report": "report.md",
    "metrics": "metrics.json",
}
# What serving reads; the report and metrics files are for people and dashboards.
REQUIRED_DATA_FILES = ("feature_map", "id_maps", "features", "seen", "items", "popular")

_HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so a large model never sits in memory twice."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def plain_file_name(value: str) -> str:
    """`value` if it names a file directly inside the bundle folder; raises ValueError if not.

    Names come from a file on disk, so anything that could point outside the bundle is refused.
    """
    if not value or "/" in value or "\\" in value or value in {".", ".."}:
        raise ValueError(
            f"{value!r} is not a plain file name: file names must be a plain name inside the bundle"
        )
    return value
