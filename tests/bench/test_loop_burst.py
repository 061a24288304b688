"""The closed-loop burst benchmark on the small test bundle, against a real uvicorn worker and
a real Redis (DB 13): every list served is recorded and every click on it is accepted and
logged. A burst this small says nothing about capacity; the bookkeeping must add up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

from bench import loop_burst


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_burst_loses_no_impression_and_no_feedback(
    bundle_dir: Path, loop_redis_url: str, tmp_path: Path
) -> None:
    docs = tmp_path / "experiment.md"
    docs.write_text("# page\n\nbefore\n")
    loop_burst.main([
        "--model-dir", str(bundle_dir), "--redis-url", loop_redis_url, "--sizes", "60",
        "--repeat", "1", "--results-dir", str(tmp_path / "results"), "--docs", str(docs),
    ])  # fmt: skip

    [path] = (tmp_path / "results").glob("loop-burst-*.json")
    [run] = json.loads(path.read_text())["runs"]
    statuses = run["recommend_status"]
    assert set(statuses) <= {"200", "503"}  # admission control may shed, nothing else
    assert sum(statuses.values()) == 60
    assert run["served"] == statuses.get("200", 0) > 0
    assert run["impressions_recorded"] == run["served"]
    assert run["feedback_sent"] == run["served"]
    assert run["feedback_status"] == {"202": run["served"]}
    assert run["events_logged"] == run["served"]
    text = docs.read_text()
    assert text.startswith("# page\n\nbefore\n")
    assert loop_burst.MARKERS[0] in text and f"| 60 | {run['served']} |" in text


def test_a_database_in_use_is_left_alone(
    bundle_dir: Path, loop_redis_url: str, tmp_path: Path
) -> None:
    redis.Redis.from_url(loop_redis_url).set("someone:else", "1")
    with pytest.raises(SystemExit, match="is not empty: pass --flush"):
        loop_burst.main([
            "--model-dir", str(bundle_dir), "--redis-url", loop_redis_url,
            "--results-dir", str(tmp_path),
        ])  # fmt: skip
    assert redis.Redis.from_url(loop_redis_url).get("someone:else") == b"1"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--model-dir", "no/such/bundle", "--model-dir: "),
        ("--redis-url", "redis://127.0.0.1:1/0", "--redis-url redis://127.0.0.1:1/0: "),
        ("--redis-url", "nonsense://x", "--redis-url nonsense://x: "),
    ],
)
def test_a_missing_bundle_or_redis_is_a_one_line_error(
    bundle_dir: Path, flag: str, value: str, message: str
) -> None:
    argv = {"--model-dir": str(bundle_dir), "--redis-url": "redis://127.0.0.1:1/0", flag: value}
    with pytest.raises(SystemExit) as stopped:
        loop_burst.main([part for pair in argv.items() for part in pair])
    assert str(stopped.value.code).startswith(message)
    assert "\n" not in str(stopped.value.code)


@pytest.mark.parametrize("sizes", ["abc", "10,-1", ""])
def test_bad_sizes_are_one_line_errors(sizes: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        loop_burst.main(["--sizes", sizes])
    assert stopped.value.code == 2
    assert "--sizes" in capsys.readouterr().err
