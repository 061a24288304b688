"""End to end: serve.sh with two uvicorn workers, a real Prometheus scraping it, and the
dashboard's own PromQL checked against the traffic that was sent.

Real parts only: the bundle from the session fixture, onnxruntime, Redis, Prometheus.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from app.routing import ABRouter
from tests.deploy.conftest import DEPLOY, REPO
from tests.deploy.dockerfile import read_dockerfile
from tests.deploy.promql import substitute_grafana_variables

logger = logging.getLogger(__name__)
PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None,
        reason="prometheus not installed (Debian package `prometheus`; .ci/run installs it)",
    ),
]
# A database of its own, so parallel suites sharing the Redis server do not collide.
REDIS_URL = "redis://127.0.0.1:6379/12"
AB_SALT = "e2e-salt"
WORKERS = 2
# Grafana's variables for a dashboard looking at the last few minutes.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1s", "$__range": "5m"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(check: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture()
def clean_redis() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    try:
        yield REDIS_URL
    finally:
        client.flushdb()
        client.close()


@pytest.fixture()
def served_app(bundle_dir: Path, clean_redis: str, tmp_path: Path) -> Iterator[str]:
    """deploy/docker/serve.sh, exactly as the image runs it, on a loopback port."""
    port = _free_port()
    multiproc = tmp_path / "prometheus-multiproc"
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(WORKERS),
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
        "MODEL_DIR": str(bundle_dir),
        "REDIS_URL": clean_redis,
        # Generous: a loaded CI machine must not turn cache reads into errors here.
        "REDIS_SOCKET_TIMEOUT_SECONDS": "2",
        "AB_STUDENT_PERCENT": "50",
        "AB_SALT": AB_SALT,
        "ORT_PROVIDERS": "CPUExecutionProvider",
        "ORT_INTRA_OP_THREADS": "1",
        "ADMIN_TOKEN": "",
        "ACCESS_LOG": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(REPO),
        # serve.sh runs `uvicorn` from PATH: the one beside this interpreter (the venv's
        # when the suite runs as `.venv/bin/python -m pytest`).
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    # What a crashed previous run leaves behind; serve.sh must clear it before start.
    multiproc.mkdir()
    stale = multiproc / "counter_4242.db"
    stale.write_bytes(b"stale")
    log = (tmp_path / "app.log").open("wb")
    process = subprocess.Popen(
        ["sh", str(DEPLOY / "docker" / "serve.sh")],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            lambda: process.poll() is None and httpx.get(f"{base}/readyz").status_code == 200,
            timeout=120,
            what="the app to be ready",
        )
        # Each worker publishes model_info at load: one gauge file per worker pid.
        _wait_for(
            lambda: (
                len({p.stem.rsplit("_", 1)[1] for p in multiproc.glob("gauge_*.db")}) == WORKERS
            ),
            timeout=60,
            what=f"{WORKERS} workers to load the bundle",
        )
        assert not stale.exists()
        yield base
    finally:
        _stop(process)
        log.close()
        if process.returncode not in (0, -signal.SIGTERM):
            logger.warning("app log tail:\n%s", (tmp_path / "app.log").read_text()[-4000:])


@pytest.fixture()
def prometheus(served_app: str, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the app every second, with the repository's alert rules."""
    port = _free_port()
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus" / rule) for rule in shipped["rule_files"]],
        "scrape_configs": [
            {
                "job_name": "recsys",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [served_app.removeprefix("http://")]}],
            }
        ],
    }
    config_path = tmp_path / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("wb")
    assert PROMETHEUS is not None
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config_path}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_for(
            lambda: httpx.get(f"{base}/-/ready").status_code == 200,
            timeout=30,
            what="Prometheus to start",
        )
        _wait_for(
            lambda: _values(base, 'up{job="recsys"}') == {(): 1.0},
            timeout=30,
            what="the first successful scrape",
        )
        yield base
    finally:
        _stop(process)
        log.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (expr, body)
    return body["data"]["result"]


def _values(base: str, expr: str, *labels: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(row["metric"].get(label, "") for label in labels): float(row["value"][1])
        for row in _query(base, expr)
    }


def _dashboard_exprs() -> dict[str, list[str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "recsys.json").read_text())
    return {
        panel["title"]: [
            substitute_grafana_variables(t["expr"], DASHBOARD_VARIABLES) for t in panel["targets"]
        ]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }


@dataclass
class Traffic:
    """Sends requests and keeps the exact counts the app's metrics must show."""

    client: httpx.Client
    router: ABRouter
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)  # (route, variant)
    assigned: Counter[str] = field(default_factory=Counter)  # sticky A/B decisions
    cache: Counter[str] = field(default_factory=Counter)  # hit / miss
    keys: set[tuple[str, str]] = field(default_factory=set)

    def recommend(self, user: str, *, variant: str | None = None, known: bool = True) -> None:
        headers = {"X-Variant": variant} if variant else {}
        response = self.client.get("/recommend", params={"user_id": user}, headers=headers)
        assert response.status_code == 200, response.text
        served = response.json()["variant"]
        if variant is None:
            # Without the header the sticky router decides; the app must agree with it.
            assert served == self.router.assign(user)
            self.assigned[served] += 1
        assert variant is None or served == variant
        self.sent["/recommend", served] += 1
        # Unknown users without demographics share the cached popularity list.
        key = (served, user if known else "popular")
        self.cache["hit" if key in self.keys else "miss"] += 1
        self.keys.add(key)

    def predict(self, user: str, item: str, *, variant: str) -> None:
        response = self.client.post(
            "/predict_rating",
            json={"user_id": user, "item_id": item},
            headers={"X-Variant": variant},
        )
        assert response.status_code == 200, response.text
        self.sent["/predict_rating", variant] += 1

    def reject(self) -> None:
        """A request refused before routing: counted under variant "none" with a 4xx."""
        response = self.client.get("/recommend", params={"user_id": "1", "k": 0})
        assert response.status_code == 422, response.text
        self.sent["/recommend", "none"] += 1

    def snapshot(self) -> tuple[Counter[tuple[str, str]], Counter[str], Counter[str]]:
        return Counter(self.sent), Counter(self.assigned), Counter(self.cache)


def _wait_for_counts(prometheus: str, traffic: Traffic) -> None:
    """Until Prometheus has scraped every request sent, summed over both workers."""
    expr = (
        "sum by (route, variant) "
        '(http_request_duration_seconds_count{route=~"/recommend|/predict_rating"})'
    )
    _wait_for(
        lambda: (
            _values(prometheus, expr, "route", "variant")
            == {k: float(v) for k, v in traffic.sent.items()}
        ),
        timeout=20,
        what=f"Prometheus to scrape {dict(traffic.sent)}",
    )


def _check_image_healthcheck(served_app: str) -> None:
    """The serving image's HEALTHCHECK command passes on the live app, fails on no app."""
    serve = read_dockerfile(REPO / "Dockerfile").stages["serve"]
    command = json.loads(serve.all("HEALTHCHECK")[-1].split("CMD", 1)[1])
    # The image's `python` is this test's interpreter here.
    assert command[0] == "python"
    command[0] = sys.executable
    port = served_app.rsplit(":", 1)[1]
    for target, healthy in ((port, True), (str(_free_port()), False)):
        done = subprocess.run(
            command,
            env={**os.environ, "PORT": target},
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert (done.returncode == 0) is healthy, done.stderr


def test_dashboard_queries_agree_with_the_traffic_sent(
    served_app: str, prometheus: str, bundle_dir: Path
) -> None:
    _check_image_healthcheck(served_app)
    ids = json.loads((bundle_dir / "id_maps.json").read_text())
    users, items = ids["users"][:12], ids["items"][:5]
    router = ABRouter(student_percent=50, salt=AB_SALT)
    by_arm = {router.assign(u): u for u in users}
    assert set(by_arm) == {"teacher", "student"}, "pick more users: one arm got none"

    with httpx.Client(base_url=served_app, timeout=30) as client:
        traffic = Traffic(client, router)
        # Warm-up: every series the dashboard reads exists and is scraped once before the
        # measured traffic, since rate() cannot see increments before a series' first sample.
        for variant in ("teacher", "student"):
            traffic.recommend(users[0], variant=variant)
            traffic.recommend(users[0], variant=variant)
            traffic.predict(users[0], items[0], variant=variant)
            traffic.recommend(by_arm[variant])
        traffic.reject()
        _wait_for_counts(prometheus, traffic)
        time.sleep(1.5)
        sent0, assigned0, cache0 = traffic.snapshot()

        # Teacher and student interleaved 2:1, so any window sees the same ratio; users
        # repeat so the shared Redis produces hits across both workers.
        for i, variant in enumerate(["teacher", "teacher", "student"] * 16):
            user = users[i % len(users)]
            traffic.recommend(user, variant=variant)
            if i % 2 == 0:
                traffic.predict(user, items[i % len(items)], variant=variant)
            known = bool(i % 3)
            traffic.recommend(user if known else f"new-user-{i}", known=known)
            time.sleep(0.05)
        for _ in range(3):
            traffic.reject()
    _wait_for_counts(prometheus, traffic)
    sent = traffic.sent - sent0
    assigned = traffic.assigned - assigned0
    cache = traffic.cache - cache0

    # Raw counters: exact.
    assert _values(prometheus, "sum by (variant) (ab_assignments_total)", "variant") == {
        (v,): float(n) for v, n in traffic.assigned.items()
    }
    assert _values(prometheus, "sum by (result) (cache_requests_total)", "result") == {
        (r,): float(n) for r, n in traffic.cache.items()
    }
    inference = _values(
        prometheus,
        "sum by (variant, endpoint) (model_inference_seconds_count)",
        "variant",
        "endpoint",
    )
    for variant in ("teacher", "student"):
        assert inference[variant, "predict_rating"] >= traffic.sent["/predict_rating", variant]
        assert inference[variant, "recommend"] >= 1

    exprs = _dashboard_exprs()

    # Requests per second by variant: both arms present, in the ratio sent.
    rps = _values(prometheus, exprs["Requests per second by variant"][0], "variant")
    assert set(rps) == {("teacher",), ("student",)}
    model_routes = ("/recommend", "/predict_rating")
    total = {v: sum(sent[r, v] for r in model_routes) for v in ("teacher", "student")}
    logger.info(
        "teacher/student rps %.3f, sent %.3f",
        rps["teacher",] / rps["student",],
        total["teacher"] / total["student"],
    )
    assert rps["teacher",] / rps["student",] == pytest.approx(
        total["teacher"] / total["student"], rel=0.2
    )

    # Latency percentiles: a finite positive value for each variant on each model route.
    for expr in exprs["Request latency p50 / p95 / p99 by variant and route"]:
        latency = _values(prometheus, expr, "variant", "route")
        for variant in ("teacher", "student"):
            for route in model_routes:
                assert 0 < latency[variant, route] < 30, (expr, variant, route)
    for expr in exprs["Model inference p50 / p95 / p99 by variant and endpoint"]:
        latency = _values(prometheus, expr, "variant", "endpoint")
        assert {
            (v, e) for v in ("teacher", "student") for e in ("recommend", "predict_rating")
        } <= set(latency)
    mean = _values(prometheus, exprs["Mean model inference time by variant"][0], "variant")
    assert set(mean) == {("teacher",), ("student",)} and all(v > 0 for v in mean.values())

    # A/B split: the sticky assignments only, in the router's proportion.
    split = _values(prometheus, exprs["A/B split (assignments in range)"][0], "variant")
    share = split["student",] / sum(split.values())
    logger.info("student share %.3f, sent %.3f", share, assigned["student"] / assigned.total())
    assert share == pytest.approx(assigned["student"] / sum(assigned.values()), abs=0.1)

    # Cache hit ratio close to the exact one computed from the keys sent.
    hit_ratio = _values(prometheus, exprs["Cache hit ratio"][0])[()]
    logger.info("hit ratio %.3f, sent %.3f", hit_ratio, cache["hit"] / cache.total())
    assert hit_ratio == pytest.approx(cache["hit"] / cache.total(), abs=0.1)

    # No server errors: zero (not an empty result) for both variants; the rejected
    # requests show as a 4xx share of the unrouted ones.
    errors_5xx, errors_4xx = exprs["Error ratio by variant (4xx, 5xx)"]
    ratio_5xx = _values(prometheus, errors_5xx, "variant")
    assert ratio_5xx["teacher",] == ratio_5xx["student",] == 0.0
    ratio_4xx = _values(prometheus, errors_4xx, "variant")
    assert ratio_4xx["teacher",] == ratio_4xx["student",] == 0.0
    assert ratio_4xx["none",] > 0

    # Model versions and provider: one row per variant, the bundle's version, on CPU.
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    info = _values(
        prometheus,
        exprs["Model versions and execution provider"][0],
        "variant",
        "version",
        "provider",
    )
    assert set(info) == {
        ("teacher", manifest["version"], "CPUExecutionProvider"),
        ("student", manifest["version"], "CPUExecutionProvider"),
    }
    assert _values(prometheus, exprs["Replicas up"][0]) == {(): 1.0}

    # Every dashboard query is valid PromQL that returns data for this traffic.
    for title, panel_exprs in exprs.items():
        for expr in panel_exprs:
            assert _query(prometheus, expr), f"{title}: {expr} returned nothing"

    # The shipped alert rules evaluate cleanly against the real series, and none fires.
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [rule for group in rules for rule in group["rules"]]
    assert evaluated and all(rule["health"] == "ok" for rule in evaluated), evaluated
    assert [r["name"] for r in evaluated if r["state"] == "firing"] == []
