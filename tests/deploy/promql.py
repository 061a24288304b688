"""Just enough PromQL reading to tell which metric and label names an expression uses.

Not a parser: it recognises selectors, label matchers and grouping clauses, which is all
the dashboard and alert checks need. Grafana's interval variables are replaced first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1h",
}
KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip

_STRING = r'"(?:[^"\\]|\\.)*"'
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*({_STRING})")
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+\w+")
# A name not followed by "(" (a function or aggregation) is a metric.
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_NUMBER_EXP = re.compile(r"\d[eE][+-]?\d")


@dataclass
class Matcher:
    metric: str | None
    label: str
    op: str
    value: str


@dataclass
class Usage:
    """Names an expression refers to."""

    metrics: set[str] = field(default_factory=set)
    matchers: list[Matcher] = field(default_factory=list)
    grouping_labels: set[str] = field(default_factory=set)


def substitute_grafana_variables(expr: str, values: dict[str, str] | None = None) -> str:
    table = {**GRAFANA_VARIABLES, **(values or {})}
    # Longest first: $__range must not eat the front of a longer variable.
    for name in sorted(table, key=len, reverse=True):
        expr = expr.replace(name, table[name])
    return expr


def usage(expr: str) -> Usage:
    text = substitute_grafana_variables(expr)
    if "$" in text:
        raise ValueError(f"unknown template variable in {expr!r}")
    found = Usage()
    for match in _GROUPING.finditer(text):
        found.grouping_labels.update(
            name.strip() for name in match.group(2).split(",") if name.strip()
        )
    text = _GROUPING.sub(" ", text)
    for match in _SELECTOR.finditer(text):
        metric = match.group(1)
        if metric is not None:
            found.metrics.add(metric)
        body = match.group(2)
        for label, op, value in _MATCHER.findall(body):
            found.matchers.append(Matcher(metric, label, op, value[1:-1]))
        leftover = _MATCHER.sub("", body).replace(",", "").strip()
        if leftover:
            raise ValueError(f"unreadable label matchers {body!r} in {expr!r}")
    text = _SELECTOR.sub(" ", text)
    text = re.sub(_STRING, " ", text)
    text = _RANGE.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER_EXP.sub(" ", text)
    for name in _IDENT.findall(text):
        if name.lower() not in KEYWORDS:
            found.metrics.add(name)
    return found
