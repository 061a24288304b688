"""Shared readers for the deployment files and the app facts they must agree with."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from app.config import Settings
from app.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
APP_PORT = 8000
# Labels Prometheus itself attaches to every scraped series.
TARGET_LABELS = frozenset({"job", "instance"})


def load_yaml_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def shell_variables(path: Path) -> set[str]:
    """Environment variables a POSIX shell script reads as ${NAME...} or $NAME."""
    text = path.read_text()
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text)) | set(
        re.findall(r"\$([A-Z_][A-Z0-9_]*)", text)
    )


@pytest.fixture(scope="session")
def settings_env_names() -> set[str]:
    """Environment names app/config.py reads: upper-case field names plus the prefix."""
    prefix = str(Settings.model_config.get("env_prefix", "")).upper()
    return {prefix + name.upper() for name in Settings.model_fields}


@pytest.fixture(scope="session")
def serve_env_names(settings_env_names: set[str]) -> set[str]:
    """Every variable the serving container may legitimately be given."""
    return (
        settings_env_names
        | shell_variables(DEPLOY / "docker" / "serve.sh")
        # Read by prometheus_client itself and by app/metrics.py.
        | {"PROMETHEUS_MULTIPROC_DIR"}
    )


@pytest.fixture(scope="session")
def exported_series() -> dict[str, frozenset[str]]:
    """Sample name -> label names, as the app's real registry writes them in /metrics.

    Every labelled metric gets one child so it appears in the exposition; the text is
    then read back with prometheus_client's own parser.
    """
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    collectors = [v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)]
    assert collectors, "app.metrics.Metrics holds no prometheus_client metrics"
    for collector in collectors:
        labelnames = collector._labelnames
        child = collector.labels(*["x"] * len(labelnames)) if labelnames else collector
        if isinstance(child, Histogram):
            child.observe(0.01)
        elif isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Gauge):
            child.set(1)
    series: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            # Multiprocess mode (the deployed one) writes no _created series.
            if sample.name.endswith("_created"):
                continue
            series[sample.name] = frozenset(sample.labels) | series.get(sample.name, frozenset())
    return series


def contract_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """docs/contracts.md section 3: metric name -> (type, label names)."""
    text = (REPO / "docs" / "contracts.md").read_text()
    section = text.split("## 3.", 1)[1].split("\n## ", 1)[0]
    found = {}
    pattern = r"`(\w+)\{([\w,]+)\}`\s+(histogram|counter|gauge)"
    for name, labels, kind in re.findall(pattern, section):
        found[name] = (kind, frozenset(labels.split(",")))
    return found
