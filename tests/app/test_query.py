"""app/api/query.py: a query string validated as one model, with FastAPI's rules, errors
and OpenAPI parameters."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.testclient import TestClient
from starlette.requests import Request

from app.api.query import query_model
from app.schemas import RecommendQuery
from tests.app.conftest import Reference
from tests.helpers import error_body


def _request(query_string: str) -> Request:
    return Request({"type": "http", "query_string": query_string.encode(), "headers": []})


def _parse(query_string: str) -> RecommendQuery:
    return asyncio.run(query_model(RecommendQuery)(_request(query_string)))


def test_values_are_parsed_like_declared_parameters() -> None:
    query = _parse("user_id=u7&k=3&exclude_seen=false&age=30&unknown=x")
    assert query == RecommendQuery(user_id="u7", k=3, exclude_seen=False, age=30)
    # A repeated name counts with its last value, as FastAPI reads a scalar parameter.
    assert _parse("user_id=a&k=3&k=5&user_id=b").model_dump(include={"user_id", "k"}) == {
        "user_id": "b",
        "k": 5,
    }
    assert _parse("user_id=a") == RecommendQuery(user_id="a")


@pytest.mark.parametrize(
    ("query_string", "loc", "kind"),
    [
        ("k=3", ("query", "user_id"), "missing"),
        ("user_id=a&k=0", ("query", "k"), "greater_than_equal"),
        ("user_id=a&k=1.5", ("query", "k"), "value_error"),
        ("user_id=a&k=1_0", ("query", "k"), "value_error"),
        ("user_id=a&k=2.0", ("query", "k"), "value_error"),
        ("user_id=a&k=%201", ("query", "k"), "value_error"),
        ("user_id=a&age=3e1", ("query", "age"), "value_error"),
        ("user_id=a&exclude_seen=maybe", ("query", "exclude_seen"), "bool_parsing"),
        ("user_id=" + "x" * 129, ("query", "user_id"), "value_error"),
        ("user_id=%20%20", ("query", "user_id"), "value_error"),
    ],
)
def test_a_bad_value_is_fastapis_validation_error(
    query_string: str, loc: tuple[str, ...], kind: str
) -> None:
    with pytest.raises(RequestValidationError) as raised:
        _parse(query_string)
    (error,) = raised.value.errors()
    assert (error["loc"], error["type"]) == (loc, kind)
    assert "input" not in error  # the raw query string never goes back


def test_recommend_reads_the_model(client: TestClient, reference: Reference) -> None:
    user = reference.users[0]
    response = client.get(f"/recommend?user_id={user}&k=4&k=2&utm_source=mail")
    assert response.status_code == 200
    assert len(response.json()["items"]) == 2
    bad = client.get("/recommend", params={"user_id": user, "k": "0", "age": "-1"})
    assert bad.status_code == 422
    body = error_body(bad)
    assert [e["loc"] for e in body["errors"]] == [["query", "k"], ["query", "age"]]
    assert "query.k" in body["detail"]
    parameters = client.app.openapi()["paths"]["/recommend"]["get"]["parameters"]  # type: ignore[attr-defined]
    assert {p["name"] for p in parameters} == {*RecommendQuery.model_fields, "X-Variant"}
