"""The Grafana dashboard: provisioned datasource, required panels, PromQL the app backs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, load_yaml_documents
from tests.deploy.metric_names import problems
from tests.deploy.promql import usage

DASHBOARD = DEPLOY / "grafana" / "dashboards" / "recsys.json"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p["targets"]]


def test_panels_use_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    source = load_yaml_documents(DEPLOY / "grafana/provisioning/datasources/prometheus.yml")[0]
    uid = source["datasources"][0]["uid"]
    for panel in _panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_expression_names_only_exported_series_and_labels(
    dashboard: dict[str, Any], exported_series: dict[str, frozenset[str]]
) -> None:
    for title, expr in _exprs(dashboard):
        assert problems(expr, exported_series) == [], title


def test_the_checker_catches_wrong_names(exported_series: dict[str, frozenset[str]]) -> None:
    # Guards against a checker that silently accepts everything.
    assert problems("rate(http_requests_total[1m])", exported_series)
    assert problems("sum by (user) (rate(cache_requests_total[1m]))", exported_series)
    assert problems('ab_assignments_total{variant="control"}', exported_series)
    assert problems('model_info{endpoint="x"}', exported_series)
    assert problems("sum by (le) (rate(model_inference_seconds_count[1m]))", exported_series)


def _panel_with(dashboard: dict[str, Any], predicate: Any) -> list[str]:
    return [title for title, expr in _exprs(dashboard) if predicate(expr, usage(expr))]


def test_required_panels_exist(dashboard: dict[str, Any]) -> None:
    def needs(predicate: Any, what: str) -> None:
        assert _panel_with(dashboard, predicate), f"no panel shows {what}"

    needs(
        lambda e, u: (
            "http_request_duration_seconds_count" in u.metrics
            and u.grouping_labels == {"variant"}
            and "rate(" in e
            and "status" not in e
        ),
        "requests per second by variant",
    )
    for quantile in ("0.5", "0.95", "0.99"):
        needs(
            lambda e, u, q=quantile: (
                e.startswith(f"histogram_quantile({q},")
                and "http_request_duration_seconds_bucket" in u.metrics
                and {"variant", "route"} <= u.grouping_labels
            ),
            f"p{quantile} request latency by variant and route",
        )
    needs(
        lambda e, u: (
            any(m.startswith("model_inference_seconds") for m in u.metrics)
            and "variant" in u.grouping_labels
        ),
        "model inference time by variant",
    )
    needs(
        lambda e, u: (
            "cache_requests_total" in u.metrics
            and any(m.label == "result" and m.value == "hit" for m in u.matchers)
        ),
        "the cache hit ratio",
    )
    needs(
        lambda e, u: any(m.label == "status" and m.value.startswith("5") for m in u.matchers),
        "the server error ratio",
    )
    needs(lambda e, u: "ab_assignments_total" in u.metrics, "the A/B split")
    needs(
        lambda e, u: (
            "model_info" in u.metrics and {"variant", "version", "provider"} <= u.grouping_labels
        ),
        "model versions and execution provider",
    )


def test_dashboard_is_self_contained(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "recsys-distill"
    # Provisioned read-only: edits belong in this file, not in the UI.
    assert dashboard["editable"] is False
    text = DASHBOARD.read_text()
    assert "${DS_" not in text, "exported-for-sharing placeholders need a manual import step"
