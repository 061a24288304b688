"""Checks that a PromQL expression only names series and labels that really exist."""

from __future__ import annotations

from tests.deploy.conftest import TARGET_LABELS
from tests.deploy.promql import usage

# Values the app writes (docs/contracts.md section 3); a matcher outside them never matches.
LABEL_VALUES = {
    "variant": {"teacher", "student", "none"},
    "result": {"hit", "miss", "error"},
}
# Series Prometheus makes itself or that exporters deployed beside the app provide.
EXTERNAL_SERIES = {
    "up": frozenset(),
    "redis_up": frozenset(),  # redis_exporter (docker-compose.yml, deploy/k8s/redis.yaml)
}


def _value_alternatives(value: str) -> list[str]:
    return value.split("|")


def problems(expr: str, exported: dict[str, frozenset[str]]) -> list[str]:
    """Everything in `expr` that names a series or label the app does not export."""
    known = {**exported, **EXTERNAL_SERIES}
    found = usage(expr)
    issues = [f"unknown series {m}" for m in sorted(found.metrics - set(known))]
    labels_in_expr = set(TARGET_LABELS)
    for metric in found.metrics & set(known):
        labels_in_expr |= known[metric]
    for matcher in found.matchers:
        allowed = (
            known.get(matcher.metric, frozenset()) | TARGET_LABELS
            if matcher.metric
            else labels_in_expr
        )
        if matcher.label not in allowed:
            issues.append(f"{matcher.metric} has no label {matcher.label}")
        if matcher.label in LABEL_VALUES and matcher.op in ("=", "=~"):
            wanted = _value_alternatives(matcher.value) if matcher.op == "=~" else [matcher.value]
            stray = [v for v in wanted if v not in LABEL_VALUES[matcher.label]]
            if stray:
                issues.append(f"{matcher.label} never takes the values {stray}")
    for label in sorted(found.grouping_labels - labels_in_expr):
        issues.append(f"grouping by {label}, which no series in the expression carries")
    return issues
