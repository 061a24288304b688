"""deploy/prometheus: valid for promtool, alerts unit-tested, names those the app exports."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, REPO, load_yaml_documents
from tests.deploy.metric_names import problems

PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package `prometheus`; .ci/run installs it)",
)


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def _rules() -> list[dict]:
    return [rule for group in load_yaml_documents(ALERTS)[0]["groups"] for rule in group["rules"]]


@needs_promtool
def test_promtool_accepts_the_config() -> None:
    done = _promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    done = _promtool("check", "rules", "alerts.yml", cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in done.stdout


@needs_promtool
def test_every_alert_fires_on_its_scenario() -> None:
    # tests/deploy/alerts_test.yml feeds synthetic series and states the exact alerts.
    done = _promtool("test", "rules", "alerts_test.yml", cwd=Path(__file__).parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_unit_tests_cover_every_alert() -> None:
    tests = load_yaml_documents(Path(__file__).parent / "alerts_test.yml")[0]["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in _rules()}


def test_required_alerts_exist() -> None:
    names = {rule["alert"] for rule in _rules()}
    assert {
        "RecsysP99LatencyHigh",
        "RecsysHigh5xxRatio",
        "RecsysCacheHitRatioFalling",
        "RecsysStudentLatencyRegression",
        "RecsysAppDown",
        "RedisDown",
    } <= names
    for rule in _rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_alerts_name_only_exported_series(exported_series: dict[str, frozenset[str]]) -> None:
    for rule in _rules():
        assert problems(rule["expr"], exported_series) == [], rule["alert"]


def test_rule_file_is_loaded_by_the_config() -> None:
    config = load_yaml_documents(PROMETHEUS_DIR / "prometheus.yml")[0]
    assert [(PROMETHEUS_DIR / f).resolve() for f in config["rule_files"]] == [ALERTS]


def test_grafana_rate_interval_matches_scrape_interval() -> None:
    config = load_yaml_documents(PROMETHEUS_DIR / "prometheus.yml")[0]
    datasource = load_yaml_documents(
        REPO / "deploy/grafana/provisioning/datasources/prometheus.yml"
    )[0]["datasources"][0]
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]


def test_kubernetes_config_keeps_the_annotated_pods_of_the_manifests() -> None:
    config = load_yaml_documents(PROMETHEUS_DIR / "prometheus-k8s.yml")[0]
    assert (
        config["rule_files"]
        == load_yaml_documents(PROMETHEUS_DIR / "prometheus.yml")[0]["rule_files"]
    )
    k8s = DEPLOY / "k8s"
    pods = {
        "recsys": load_yaml_documents(k8s / "deployment.yaml")[0],
        "redis": load_yaml_documents(k8s / "redis.yaml")[0],
    }
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == set(pods)
    for name, deployment in pods.items():
        template = deployment["spec"]["template"]["metadata"]
        namespaces = jobs[name]["kubernetes_sd_configs"][0]["namespaces"]["names"]
        assert namespaces == [deployment["metadata"]["namespace"]]
        keep = {
            rule["source_labels"][0]: rule["regex"]
            for rule in jobs[name]["relabel_configs"]
            if rule.get("action") == "keep"
        }
        label = keep["__meta_kubernetes_pod_label_app_kubernetes_io_name"]
        assert template["labels"]["app.kubernetes.io/name"] == label
        assert (
            template["annotations"]["prometheus.io/scrape"]
            == keep["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
        )
        assert "prometheus.io/port" in template["annotations"]


@needs_promtool
def test_promtool_accepts_the_kubernetes_config(tmp_path: Path) -> None:
    done = _promtool("check", "config", "prometheus-k8s.yml", cwd=PROMETHEUS_DIR)
    output = done.stdout + done.stderr
    if "kubernetes_sd_configs not found" in output:
        # Debian's build leaves Kubernetes discovery out; everything else (relabelling
        # regexes and actions, rule files) is still checked with a stand-in target list.
        config = load_yaml_documents(PROMETHEUS_DIR / "prometheus-k8s.yml")[0]
        config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config["rule_files"]]
        for job in config["scrape_configs"]:
            del job["kubernetes_sd_configs"]
            job["static_configs"] = [{"targets": ["stand-in:9"]}]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        done = _promtool("check", "config", "prometheus.yml", cwd=tmp_path)
        output = done.stdout + done.stderr
    assert done.returncode == 0, output
