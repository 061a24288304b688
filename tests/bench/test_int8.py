"""bench.int8: both quantisations of a real bundle's student, timed and compared to fp32."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import int8


def test_compares_both_quantisations_with_the_fp32_graph(
    models_root: Path, synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "int8"
    args = ["--model-dir", str(models_root / "current"), "--data-dir", str(synthetic_ml100k)]
    assert int8.main([*args, "--repeat", "1", "--out", str(out)]) == 0
    rows = json.loads(out.with_suffix(".json").read_text())
    assert set(rows) == {"fp32", "tables only", "default set"}
    assert rows["fp32"]["rating_diff_max"] == 0.0
    # The test bundle's tables are too small for int8 to save bytes; its ratings show the
    # quantisation.
    for name in ("tables only", "default set"):
        assert rows[name]["pair_bytes"] > 0 and rows[name]["rating_bytes"] > 0
        assert 0.0 < rows[name]["rating_diff_mean"] <= rows[name]["rating_diff_max"] < 0.5
        assert len(rows[name]["rating_graph_us_10"]) == 1 and rows[name]["catalogue_ms"][0] > 0
    assert "| tables only |" in out.with_suffix(".md").read_text()


def test_a_folder_without_a_student_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        int8.main(["--model-dir", str(tmp_path), "--data-dir", str(tmp_path)])
    assert "no student.onnx" in capsys.readouterr().err
