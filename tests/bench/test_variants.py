"""bench/variants.py: one component setting, several values, on held-back training data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest

from bench import variants


def _run(data_dir: Path, out: Path, *setting: str) -> dict[str, Any]:
    """A quick MF run of bench.variants on fold u1; its JSON payload."""
    argv = ["--data-dir", str(data_dir), "--folds", "u1", "--components", "mf", "--quick"]
    assert variants.main([*argv, *setting, "--out", str(out)]) == 0
    return cast(dict[str, Any], json.loads(out.with_suffix(".json").read_text()))


def test_trains_each_value_and_pairs_it_with_the_first(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "variants"
    payload = _run(synthetic_ml100k, out, "--set", "epochs=2,1")
    longer, shorter = payload["rows"]
    assert (longer["value"], shorter["value"]) == (2, 1)
    assert (longer["epochs_run"], shorter["epochs_run"]) == (2, 1)
    base, variant = payload["summary"]
    assert "time_ratio" not in base and payload["field"] == "epochs"
    assert variant["ndcg@10_delta"] == pytest.approx(shorter["ndcg@10"] - longer["ndcg@10"])
    assert "| u1 | 0 | mf | 1 |" in out.with_suffix(".md").read_text()


def test_seeds_pair_each_run_with_the_baseline_of_its_own_seed(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    payload = _run(
        synthetic_ml100k, tmp_path / "variants", "--set", "tower_l2=0.01,0.001", "--seeds", "2"
    )
    rows = {(r["seed"], r["value"]): r for r in payload["rows"]}
    assert set(rows) == {(0, 0.01), (0, 0.001), (1, 0.01), (1, 0.001)}
    # Seeds draw their own selection split and initialisation.
    assert rows[(0, 0.01)]["ndcg@10"] != rows[(1, 0.01)]["ndcg@10"]
    variant = payload["summary"][1]
    deltas = [rows[(s, 0.001)]["ndcg@10"] - rows[(s, 0.01)]["ndcg@10"] for s in (0, 1)]
    assert variant["ndcg@10_delta"] == pytest.approx(sum(deltas) / 2)
    assert variant["folds"] == 2


def test_several_settings_change_together_value_by_value(
    synthetic_ml100k: Path, tmp_path: Path
) -> None:
    out = tmp_path / "variants"
    payload = _run(synthetic_ml100k, out, "--set", "epochs=2,1", "--set", "history=true,false")
    base, variant = payload["rows"]
    assert (base["value"], variant["value"]) == ("2, True", "1, False")
    assert (base["epochs_run"], variant["epochs_run"]) == (2, 1)
    assert payload["field"] == "epochs, history"
    assert payload["summary"][1]["folds"] == 1 and "time_ratio" in payload["summary"][1]
    assert "| u1 | 0 | mf | 1, False |" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("epochs", "FIELD=V1,V2"),
        ("no_such=1,2", "has no setting"),
        ("cin_layers=1,2", "has no setting"),  # MF has none; xDeepFM's is a tuple
        ("epochs=3", "at least two distinct values"),
        ("epochs=3,3", "at least two distinct values"),
        ("epochs=3,x", "takes int values"),
        ("history=true,maybe", "takes true or false"),
        ("epochs=1,2 --seeds 0", "--seeds must be at least 1"),
        ("epochs=1,2 --set history=true,false,true", "as many values as the others"),
        ("epochs=1,2 --set epochs=3,4", "set twice"),
        ("epochs=1,1 --set history=true,true", "at least two distinct values"),
    ],
)
def test_bad_settings_are_one_line_errors(
    synthetic_ml100k: Path, setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(synthetic_ml100k), "--components", "mf", "--set", *setting.split()]
    with pytest.raises(SystemExit):
        variants.main(argv)
    assert message in capsys.readouterr().err


def test_a_setting_that_is_not_a_number_is_refused(
    synthetic_ml100k: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--data-dir", str(synthetic_ml100k), "--components", "xdeepfm", "--set"]
    with pytest.raises(SystemExit):
        variants.main([*argv, "cin_layers=1,2"])
    assert "not a number or a boolean" in capsys.readouterr().err
