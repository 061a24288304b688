"""bench.lazy_adam: times both optimisers on the same gradients and compares their tables."""

from __future__ import annotations

import json

import pytest

from bench import lazy_adam


def test_reports_both_step_times_and_that_the_tables_agree(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--rows", "500", "--dim", "4", "--batch", "300", "--steps", "3"]
    assert lazy_adam.main(args) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["rows"], row["dim"], row["batch"], row["steps"]) == (500, 4, 300, 3)
    assert row["sparse_adam_ms"] > 0 and row["lazy_adam_ms"] > 0
    assert row["max_abs_diff"] == 0.0
