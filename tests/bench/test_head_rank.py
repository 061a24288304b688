"""bench/head_rank.py: one embedding subspace for both heads against one per head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench import head_rank


def test_projection_onto_the_best_subspaces_is_the_truncated_svd() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.normal(size=(20, 4)) @ rng.normal(size=(4, 30)) + 0.05 * rng.normal(size=(20, 30))
    users, items = head_rank.subspace(matrix, 3), head_rank.subspace(matrix.T, 3)
    np.testing.assert_allclose(users.T @ users, np.eye(3), atol=1e-12)
    u, s, vt = np.linalg.svd(matrix)
    want = (u[:, :3] * s[:3]) @ vt[:3]
    np.testing.assert_allclose(head_rank.project(matrix, users, items), want, atol=1e-10)
    full = head_rank.project(
        matrix, head_rank.subspace(matrix, 20), head_rank.subspace(matrix.T, 20)
    )
    np.testing.assert_allclose(full, matrix, atol=1e-10)


def test_run_reports_every_rank_and_mode(synthetic_ml100k: Path, tmp_path: Path) -> None:
    out = tmp_path / "head-rank"
    argv = ["--data-dir", str(synthetic_ml100k), "--folds", "u1", "--seeds", "1", "--quick"]
    assert head_rank.main([*argv, "--ranks", "2,60", "--out", str(out)]) == 0
    payload = json.loads(out.with_suffix(".json").read_text())
    (cell,) = payload["cells"]
    rows = {(r["rank"], r["mode"]): r for r in cell["rows"]}
    assert set(rows) == {(k, m) for k in (2, 60) for m in head_rank.MODES}
    # Rank 60 covers every user, so a matrix's own subspaces give back the matrix itself.
    assert rows[(60, "score only")]["ndcg_ratio"] == pytest.approx(1.0)
    assert rows[(60, "rating only")]["rmse_ratio"] == pytest.approx(1.0)
    assert rows[(2, "rating only")]["rmse_ratio"] <= rows[(2, "score only")]["rmse_ratio"] + 1e-9
    assert "| 60 |" in out.with_suffix(".md").read_text()


def test_bad_arguments_are_usage_errors(synthetic_ml100k: Path) -> None:
    argv = ["--data-dir", str(synthetic_ml100k)]
    for bad in (["--ranks", "0,4"], ["--seeds", "0"], ["--folds", ","]):
        with pytest.raises(SystemExit) as err:
            head_rank.parse_args([*argv, *bad])
        assert err.value.code == 2
