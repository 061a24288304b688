"""bench/query_params.py: its routes take the same parameters two ways, and it reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.api.query import openapi_parameters
from app.schemas import RecommendQuery
from bench import query_params
from bench._sections import QUERY_PARAMS


def _essentials(parameter: dict[str, Any]) -> dict[str, Any]:
    # Titles are derived from the names, differently for a model's fields.
    return {**parameter, "schema": {k: v for k, v in parameter["schema"].items() if k != "title"}}


def test_the_model_routes_openapi_parameters_are_the_declared_routes() -> None:
    """What app/api/query.py writes for /recommend is what FastAPI wrote for the same
    parameters declared one by one (the route before the model)."""
    app = query_params.declared_app()
    paths = app.openapi()["paths"]
    declared = paths["/declared"]["get"]["parameters"]
    query = [p for p in declared if p["in"] == "query"]
    assert [_essentials(p) for p in openapi_parameters(RecommendQuery)] == [
        _essentials(p) for p in query
    ]


def test_a_short_run_writes_its_json_and_section(tmp_path: Path) -> None:
    docs = tmp_path / "BENCHMARKS.md"
    docs.write_text(f"# page\n\n{QUERY_PARAMS[0]}\nold\n{QUERY_PARAMS[1]}\n\n## after\n")
    results = tmp_path / "q.json"
    argv = ["--rounds", "2", "--calls", "20", "--results", str(results), "--docs", str(docs)]
    assert query_params.main(argv) == 0
    payload = json.loads(results.read_text())
    assert set(payload["median"]) == set(query_params.ROUTES)
    assert all(len(v) == 2 and min(v) > 0 for v in payload["us_per_call"].values())
    text = docs.read_text()
    assert "old" not in text and text.endswith("## after\n")
    assert text.count(QUERY_PARAMS[0]) == 1
    for route in query_params.ROUTES:
        assert f"| {route} | {payload['median'][route]:.1f} |" in text
