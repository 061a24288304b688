"""Smoke test of the replay benchmark: a real uvicorn, Redis (DB 13) and the session
bundle's own held-out split; the online hit rate it reports must be protocol P's HR@10 on
the users each variant served, recomputed here from the lists they were given."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import replay


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_replay_reports_online_figures_from_the_run(
    bundle_dir: Path, synthetic_ml100k: Path, loop_redis_url: str, tmp_path: Path
) -> None:
    docs, results = tmp_path / "ONLINE.md", tmp_path / "results"
    code = replay.main([
        "--model-dir", str(bundle_dir), "--data-dir", str(synthetic_ml100k),
        "--redis-url", loop_redis_url, "--max-users", "20", "--concurrency", "2",
        "--throughput-seconds", "1", "--docs", str(docs), "--results-dir", str(results),
        "--note", "synthetic test bundle",
    ])  # fmt: skip
    assert code == 0
    run = json.loads(next(results.glob("replay-*.json")).read_text())
    assert run["replay"]["users"] == 20 and not run["replay"]["timed_out"]
    variants = run["readout"]["variants"]
    assert variants["teacher"]["impressions"] + variants["student"]["impressions"] == 20
    assert sum(v["feedback"] for v in variants.values()) == run["replay"]["events"]
    # Every test rating of a replayed user was a rating event with a prediction to compare.
    assert sum(v["rated"] for v in variants.values()) == run["replay"]["events"]
    assert run["readout"]["shadow"]["scored"] + run["readout"]["shadow"]["dropped"] == 20
    assert run["feedback_throughput"]["failures"] == 0
    assert run["feedback_throughput"]["requests"] > 0
    # The hit rate is HR@10 of protocol P on the users each variant served.
    test_rows = [line.split("\t") for line in (synthetic_ml100k / "u1.test").read_text().split("\n")
                 if line.strip()]  # fmt: skip
    relevant = {(u, i) for u, i, r, _ in test_rows if float(r) >= 4}
    for variant in ("teacher", "student"):
        served = [s for s in run["replay"]["served"] if s["variant"] == variant]
        hits = sum(any((s["user"], i) in relevant for i in s["items"]) for s in served)
        assert variants[variant]["lists_with_hit"] == hits
        assert variants[variant]["impressions"] == len(served)
    text = docs.read_text()
    assert "python -m bench.replay" in text and "synthetic test bundle" in text
    assert "a quick-mode bundle" in text
    for variant in ("teacher", "student"):
        assert f"| {variant} | {variants[variant]['impressions']} |" in text


def test_replay_users_are_protocol_p_users(synthetic_ml100k: Path) -> None:
    config = replay.Config(
        model_dir=Path("unused"), data_dir=synthetic_ml100k, dataset="ml-100k",
        redis_url="", k=10, max_users=1000, time_limit_s=1, concurrency=1,
        shadow_percent=0, throughput_seconds=0, seed=0,
    )  # fmt: skip
    users = replay.test_users(config, "u1")
    test_lines = (synthetic_ml100k / "u1.test").read_text().split("\n")
    rows = [line.split("\t") for line in test_lines if line.strip()]
    relevant = {u for u, _, r, _ in rows if float(r) >= 4}
    assert {u.user for u in users} == relevant
    for user in users:
        assert sorted(i for i, _, _ in user.ratings) == sorted(
            i for u, i, _, _ in rows if u == user.user
        )
