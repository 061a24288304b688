"""Marked sections that benchmarks write into shared pages (docs/BENCHMARKS.md, docs/SCALE.md)."""

from __future__ import annotations

# (begin, end) markers of each benchmark's section of docs/BENCHMARKS.md; bench/serving.py's
# report rewrites the page around them and keeps them.
CATALOGUE = ("<!-- catalogue:begin -->", "<!-- catalogue:end -->")
RATING_GRAPH = ("<!-- rating-graph:begin -->", "<!-- rating-graph:end -->")
QUERY_PARAMS = ("<!-- query-params:begin -->", "<!-- query-params:end -->")
KEPT_IN_BENCHMARKS = (CATALOGUE, RATING_GRAPH, QUERY_PARAMS)


def replace_section(text: str, section: str, *, begin: str, end: str) -> str:
    """`text` with its part from `begin` to `end` replaced by `section` (which carries both
    markers), or with `section` appended when the markers are missing."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + section + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + section + "\n"
