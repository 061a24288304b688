"""Metrics with several real workers (serve.sh): a dead worker's model_info does not keep an
old version at 1, and its counts are kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.faults.conftest import bundle_version, metric_value
from tests.faults.served import serve_env, serving

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

# A worker that served an older bundle, counted a request, and died (SIGKILL: no clean-up).
_DEAD_WORKER = """
from app.metrics import Metrics
metrics = Metrics()
metrics.set_model_info([("teacher", "old-version", "CPUExecutionProvider")])
metrics.http_request_duration_seconds.labels(
    route="/recommend", method="GET", status="200", variant="teacher"
).observe(0.01)
"""


def test_dead_workers_do_not_report_an_old_model(bundle_dir: Path, tmp_path: Path) -> None:
    multiproc = tmp_path / "prom"
    env = serve_env(bundle_dir, WEB_CONCURRENCY="2", PROMETHEUS_MULTIPROC_DIR=str(multiproc))
    with serving(env, tmp_path / "server.log") as server:
        subprocess.run(
            [sys.executable, "-c", _DEAD_WORKER],
            env={**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)},
            check=True,
            timeout=60,
        )
        assert list(multiproc.glob("gauge_livemax_*.db"))
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    info = {
        (s.labels["variant"], s.labels["version"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "model_info"
    }
    version = bundle_version(bundle_dir)
    assert info == {("teacher", version): 1.0, ("student", version): 1.0}, info
    # What the dead worker counted still counts.
    assert metric_value(text, "http_request_duration_seconds_count", route="/recommend") == 1
