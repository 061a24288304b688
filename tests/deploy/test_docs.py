"""docs/deploy.md quotes configuration values; they must be the committed ones."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO, load_yaml_documents

DOC = (REPO / "docs" / "deploy.md").read_text()


def _rules() -> dict[str, dict]:
    groups = load_yaml_documents(DEPLOY / "prometheus" / "alerts.yml")[0]["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_every_alert_is_documented() -> None:
    for name in _rules():
        assert f"`{name}`" in DOC, name


@pytest.mark.parametrize(
    ("alert", "documented", "comparison", "duration"),
    [
        ("RecsysP99LatencyHigh", "above 250 ms for 5 min", ") > 0.25", "5m"),
        (
            "RecsysHigh5xxRatio",
            "more than 1% of a variant's responses are 5xx for 5 min",
            "> 0.01",
            "5m",
        ),
        (
            "RecsysStudentLatencyRegression",
            "above 80% of the teacher's on an endpoint for 10 min",
            "> 0.8",
            "10m",
        ),
        (
            "RecsysCacheHitRatioFalling",
            "under half of what it was an hour earlier",
            "< 0.5 *",
            "10m",
        ),
        ("RecsysCacheErrors", "more than half of the cache lookups fail for 2 min", "> 0.5", "2m"),
    ],
)
def test_alert_thresholds_match_the_rules(
    alert: str, documented: str, comparison: str, duration: str
) -> None:
    rule = _rules()[alert]
    assert documented in DOC
    assert comparison in rule["expr"]
    assert rule["for"] == duration


def test_kubernetes_numbers_match_the_manifests() -> None:
    hpa = load_yaml_documents(DEPLOY / "k8s" / "hpa.yaml")[0]["spec"]
    utilisation = hpa["metrics"][0]["resource"]["target"]["averageUtilization"]
    assert f"{hpa['minReplicas']} to {hpa['maxReplicas']}\n  replicas at {utilisation}%" in DOC
    deployment = load_yaml_documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    app = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    requests, limits = app["requests"], app["limits"]
    assert f"Requests\n  {requests['cpu']} CPU / {requests['memory']}" in DOC
    assert f"limits {limits['cpu']} CPU / {limits['memory']}" in DOC
    config = load_yaml_documents(DEPLOY / "k8s" / "configmap.yaml")[0]["data"]
    assert config["WEB_CONCURRENCY"] == "2" and "with two workers" in DOC
    redis = load_yaml_documents(DEPLOY / "k8s" / "redis.yaml")[0]
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--maxmemory") + 1] == "256mb" and "`maxmemory 256mb`" in DOC


def _attack_runs() -> tuple[str, dict[str, dict]]:
    """The bench.attack block of docs/deploy.md and the committed run it names."""
    block = DOC.split("<!-- bench.attack:begin -->", 1)[1].split("<!-- bench.attack:end -->")[0]
    match = re.search(r"\((bench/results/attack-\w+\.json)\)", block)
    assert match, "the measured bound must name its committed results file"
    report = json.loads((REPO / match.group(1)).read_text())
    return block, {run["setup"]: run for run in report["runs"]}


def _mib(quantity: str) -> float:
    """A Kubernetes or compose memory quantity (1536Mi, 1536M, 2G) in MiB, roughly."""
    match = re.fullmatch(r"([\d.]+)\s*(Mi|M|Gi|G)", quantity)
    assert match, quantity
    return float(match.group(1)) * {"Mi": 1, "M": 1, "Gi": 1024, "G": 1024}[match.group(2)]


def test_memory_bound_comes_from_the_committed_attack_run_and_fits_the_limits() -> None:
    block, runs = _attack_runs()
    bounded = runs["on (defaults)"]
    assert bounded["env"] == {}, "the documented bound is the one of the default settings"
    assert (
        f"| on (defaults) | {bounded['idle_rss_mib']:.0f} MiB | {bounded['peak_rss_mib']:.0f} MiB"
        in block
    )
    assert set(bounded["attack"]["status_counts"]) <= {"200", "503"}
    # The peak under attack with admission on stays near idle (two-stage serving keeps the
    # flood from moving memory even without the gate, so that run bounds nothing).
    assert bounded["peak_rss_mib"] - bounded["idle_rss_mib"] < 64
    # Each deployment's memory limit holds its workers at that peak, with room to spare.
    deployment = load_yaml_documents(DEPLOY / "k8s" / "deployment.yaml")[0]
    config = load_yaml_documents(DEPLOY / "k8s" / "configmap.yaml")[0]["data"]
    limit = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    workers = int(config["WEB_CONCURRENCY"])
    assert _mib(limit["memory"]) >= 2 * workers * bounded["peak_rss_mib"]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["app"]
    compose_workers = int(compose["environment"]["WEB_CONCURRENCY"])
    compose_limit = compose["deploy"]["resources"]["limits"]["memory"]
    assert _mib(compose_limit) >= 2 * compose_workers * bounded["peak_rss_mib"]
