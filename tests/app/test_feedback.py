"""The closed loop through the ASGI app with a real Redis (DB 13): request ids and
impressions, POST /feedback into the event log, attribution counted once, fresh state,
bad input, and the readout."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from app.experiment import msprt_difference, wilson_interval
from app.loop_store import STREAM_KEY
from tests.app.conftest import Reference, metric_value
from tests.helpers import error_body

ADMIN = {"Authorization": "Bearer loop-token"}
TEACHER = {"X-Variant": "teacher"}
STUDENT = {"X-Variant": "student"}


@pytest.fixture
def loop_client(
    make_client: Callable[..., TestClient], loop_redis_url: str
) -> Callable[..., TestClient]:
    def make(**overrides: Any) -> TestClient:
        overrides.setdefault("redis_url", loop_redis_url)
        overrides.setdefault("admin_token", "loop-token")
        return make_client(**overrides)

    return make


@pytest.fixture
def store(loop_redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(loop_redis_url, decode_responses=True)


def _recommend(client: TestClient, user: str, headers: dict[str, str], k: int = 5) -> Any:
    response = client.get("/recommend", params={"user_id": user, "k": k}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def _post(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/feedback", json=body)


def _fill(body: Any, item: str) -> Any:
    """`body` with every "{item}" replaced by a real item id."""
    if isinstance(body, dict):
        return {key: _fill(value, item) for key, value in body.items()}
    if isinstance(body, list):
        return [_fill(value, item) for value in body]
    return item if body == "{item}" else body


def _readout(client: TestClient) -> dict[str, Any]:
    response = client.get("/admin/experiment", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def test_every_list_carries_a_request_id_and_is_recorded(
    loop_client: Callable[..., TestClient], reference: Reference, store: redis.Redis
) -> None:
    client = loop_client()
    user = reference.users[0]
    sent = client.get("/recommend", params={"user_id": user}, headers={"X-Request-ID": "mine-1"})
    assert sent.json()["request_id"] == "mine-1" == sent.headers["x-request-id"]
    generated = client.get("/recommend", params={"user_id": user})
    assert generated.json()["cached"] is True
    assert len(generated.json()["request_id"]) == 32
    assert generated.json()["request_id"] == generated.headers["x-request-id"]
    # Both impressions are stored with the served items in order; a cached answer too.
    for body in (sent.json(), generated.json()):
        stored = store.hgetall(f"recsys:imp:{body['request_id']}")
        assert stored["user"] == user and stored["variant"] == body["variant"]
        assert json.loads(stored["items"]) == [i["item_id"] for i in body["items"]]
        assert 0 < store.ttl(f"recsys:imp:{body['request_id']}") <= 86_400
    # The same user's request id again (a retry) keeps its first impression, counted once.
    retried = client.get("/recommend", params={"user_id": user}, headers={"X-Request-ID": "mine-1"})
    assert retried.json()["request_id"] == "mine-1"
    variants = _readout(client)["variants"]
    assert variants["teacher"]["impressions"] + variants["student"]["impressions"] == 2
    # Another user's list under a reused id gets an id of its own, recorded and counted; the
    # header still echoes the id sent (it names the log lines).
    other = reference.users[1]
    reused = client.get("/recommend", params={"user_id": other}, headers={"X-Request-ID": "mine-1"})
    assert reused.headers["x-request-id"] == "mine-1" != reused.json()["request_id"]
    assert store.hget("recsys:imp:mine-1", "user") == user
    assert store.hget(f"recsys:imp:{reused.json()['request_id']}", "user") == other
    variants = _readout(client)["variants"]
    assert variants["teacher"]["impressions"] + variants["student"]["impressions"] == 3
    assert metric_value(client, "recommendation_impressions_total") == 3
    clicked = {"user_id": other, "item_id": reused.json()["items"][0]["item_id"], "event": "click"}
    assert _post(client, {**clicked, "request_id": reused.json()["request_id"]}).status_code == 202


def test_a_reused_id_for_another_list_of_the_same_user_gets_an_id_of_its_own(
    loop_client: Callable[..., TestClient], reference: Reference, store: redis.Redis
) -> None:
    client = loop_client()
    user, trace = reference.users[4], {"X-Request-ID": "trace-7", **TEACHER}
    first = client.get("/recommend", params={"user_id": user, "k": 5}, headers=trace).json()
    second = client.get("/recommend", params={"user_id": user, "k": 3}, headers=trace).json()
    assert first["request_id"] == "trace-7" != second["request_id"]
    for body in (first, second):
        stored = json.loads(store.hget(f"recsys:imp:{body['request_id']}", "items"))
        assert stored == [i["item_id"] for i in body["items"]]
    # A click on the second list, naming its id, is attributed to that list's position.
    item = second["items"][0]["item_id"]
    click = {"user_id": user, "item_id": item, "event": "click"}
    assert _post(client, {**click, "request_id": second["request_id"]}).status_code == 202
    ((_, fields),) = store.xrange(STREAM_KEY)
    assert fields["request_id"] == second["request_id"] and fields["position"] == "1"


def test_attribution_counts_each_request_item_once_for_its_variant(
    loop_client: Callable[..., TestClient], reference: Reference, store: redis.Redis
) -> None:
    client = loop_client()
    teacher_user, student_user = reference.users[2], reference.users[3]
    served_t = _recommend(client, teacher_user, TEACHER)
    served_s = _recommend(client, student_user, STUDENT)
    item = served_t["items"][2]["item_id"]
    rid = served_t["request_id"]
    # The same positive feedback, again and again, in several forms.
    for body in (
        {"user_id": teacher_user, "item_id": item, "event": "click", "request_id": rid},
        {"user_id": teacher_user, "item_id": item, "event": "click", "request_id": rid},
        {"user_id": teacher_user, "item_id": item, "event": "purchase", "request_id": rid},
        {"user_id": teacher_user, "item_id": item, "event": "rating", "value": 5},  # latest
    ):
        response = _post(client, body)
        assert response.status_code == 202 and response.json() == {"accepted": 1}
    # A low rating of a served item and a click on an item that was not served: no hits.
    not_served = next(
        i for i in reference.items if i not in {x["item_id"] for x in served_s["items"]}
    )
    response = _post(
        client,
        {
            "events": [
                {"user_id": student_user, "item_id": served_s["items"][0]["item_id"],
                 "event": "rating", "value": 2, "request_id": served_s["request_id"]},
                {"user_id": student_user, "item_id": not_served, "event": "click"},
            ]
        },
    )  # fmt: skip
    assert response.status_code == 202 and response.json() == {"accepted": 2}

    readout = _readout(client)
    teacher, student = readout["variants"]["teacher"], readout["variants"]["student"]
    assert teacher["impressions"] == 1 and student["impressions"] == 1
    assert teacher["feedback"] == 4 and student["feedback"] == 2
    assert teacher["events"] == {"click": 2, "rating": 1, "purchase": 1, "dismiss": 0}
    assert (teacher["hits"], teacher["lists_with_hit"], teacher["hit_rate"]) == (1, 1, 1.0)
    assert (student["hits"], student["lists_with_hit"], student["hit_rate"]) == (0, 0, 0.0)
    # Online MAE: the rating the user was shown for the served item, once per pair.
    assert teacher["rated"] == 1
    assert teacher["online_mae"] == pytest.approx(abs(5 - served_t["items"][2]["rating"]))
    assert student["online_mae"] == pytest.approx(abs(2 - served_s["items"][0]["rating"]))
    assert metric_value(client, "recommendation_hits_total", variant="teacher") == 1
    assert metric_value(client, "recommendation_hits_total", variant="student") == 0
    assert metric_value(client, "recommendation_lists_hit_total", variant="teacher") == 1
    assert metric_value(client, "recommendation_hit_position_sum", variant="teacher") == 3
    assert metric_value(client, "feedback_events_total", variant="teacher", event="click") == 2
    # Every event is in the log with its attribution.
    entries = [fields for _, fields in store.xrange(STREAM_KEY)]
    assert len(entries) == 6
    assert [e["variant"] for e in entries] == ["teacher"] * 4 + ["student"] * 2
    assert [e["position"] for e in entries] == ["3", "3", "3", "3", "1", "0"]
    assert entries[3]["request_id"] == "" and entries[3]["attributed_request_id"] == rid
    assert {e["experiment"] for e in entries} == {readout["experiment"]["id"]}


def test_readout_statistics_follow_the_counts(
    loop_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = loop_client()
    users = reference.users[:12]
    for n, user in enumerate(users):
        served = _recommend(client, user, TEACHER if n % 2 else STUDENT)
        if n % 3:  # a hit on two lists out of three
            item = served["items"][0]["item_id"]
            assert (
                _post(client, {"user_id": user, "item_id": item, "event": "click"}).status_code
                == 202
            )
    readout = _readout(client)
    for variant in ("teacher", "student"):
        body = readout["variants"][variant]
        interval = wilson_interval(body["lists_with_hit"], body["impressions"])
        assert interval is not None and body["hit_rate_ci95"] == pytest.approx(interval.as_list())
    s, t = readout["variants"]["student"], readout["variants"]["teacher"]
    look = msprt_difference(
        s["lists_with_hit"], s["impressions"], t["lists_with_hit"], t["impressions"], tau=0.05
    )
    difference = readout["difference"]
    assert difference["student_minus_teacher"] == pytest.approx(s["hit_rate"] - t["hit_rate"])
    assert look is not None and difference["p_value_this_look"] == pytest.approx(look.p_value)
    assert difference["looks"] == 1
    # Reading again without new data changes nothing but the number of looks.
    again = _readout(client)
    assert again["difference"]["looks"] == 2
    assert {**again["difference"], "looks": 1} == difference


def test_reset_starts_a_new_experiment(
    loop_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = loop_client()
    user = reference.users[4]
    served = _recommend(client, user, TEACHER)
    before = _readout(client)
    assert client.put("/admin/experiment/reset").status_code == 401
    reset = client.put("/admin/experiment/reset", headers=ADMIN)
    assert reset.status_code == 200
    assert reset.json()["previous"] == before["experiment"]["id"]
    after = _readout(client)
    assert after["experiment"]["id"] == reset.json()["experiment"] != before["experiment"]["id"]
    assert after["variants"]["teacher"]["impressions"] == 0
    # Feedback on a list of the old experiment counts there, not in the new one.
    item = served["items"][0]["item_id"]
    assert _post(client, {"user_id": user, "item_id": item, "event": "click",
                          "request_id": served["request_id"]}).status_code == 202  # fmt: skip
    assert _readout(client)["variants"]["teacher"]["hits"] == 0


def test_feedback_removes_items_from_the_next_lists_and_the_cache(
    loop_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = loop_client()
    user = reference.users[5]
    first = _recommend(client, user, TEACHER, k=6)
    assert _recommend(client, user, TEACHER, k=6)["cached"] is True
    ids = [i["item_id"] for i in first["items"]]
    events = [
        {"user_id": user, "item_id": ids[0], "event": "dismiss"},
        {"user_id": user, "item_id": ids[1], "event": "rating", "value": 4},
        {"user_id": user, "item_id": ids[2], "event": "click"},
        {"user_id": user, "item_id": ids[3], "event": "purchase"},  # stays recommendable
    ]
    assert _post(client, {"events": events}).status_code == 202
    after = _recommend(client, user, TEACHER, k=6)
    assert after["cached"] is False, "a list computed before the feedback was served"
    remaining = [i["item_id"] for i in after["items"]]
    assert not {ids[0], ids[1], ids[2]} & set(remaining)
    assert remaining[:3] == [ids[3], ids[4], ids[5]]
    assert not reference.seen(reference.users.index(user) + 1) & set(remaining)
    # Its new list is cached under the new state; the other variant is fresh too.
    assert _recommend(client, user, TEACHER, k=6)["cached"] is True
    student = [i["item_id"] for i in _recommend(client, user, STUDENT, k=6)["items"]]
    assert not {ids[0], ids[1], ids[2]} & set(student)
    # Asking for everything (exclude_seen=false) still gives everything.
    everything = client.get(
        "/recommend", params={"user_id": user, "k": 6, "exclude_seen": "false"}, headers=TEACHER
    ).json()
    assert len(everything["items"]) == 6


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"user_id": "1", "item_id": "{item}", "event": "like"}, 422, "event: Input should be"),
        ({"user_id": "1", "item_id": "{item}", "event": "rating", "value": 7}, 422,
         "value: a rating needs a value in [1, 5], got 7.0"),
        ({"user_id": "1", "item_id": "{item}", "event": "rating"}, 422,
         "value: a rating needs a value in [1, 5], got None"),
        ({"user_id": "1", "item_id": "{item}", "event": "click", "request_id": "nope"}, 422,
         "request_id: unknown or expired request_id 'nope'"),
        ({"user_id": "1", "item_id": "no-such-item", "event": "click"}, 422,
         "item_id: unknown item_id 'no-such-item'"),
        ({"user_id": "1", "event": "click"}, 422, "missing item_id"),
        # one event must stay one row in the export's tab-separated u.data
        ({"user_id": "99\t1\t1\t880000000\n98", "item_id": "{item}", "event": "rating",
          "value": 4}, 422, "user_id: must not hold control characters (found \\t)"),
        ({"events": [{"user_id": "1", "item_id": "{item}", "event": "click"}] * 11}, 422,
         "events: 11 given, at most 10 per request"),
        ({"events": [{"user_id": "1", "item_id": "{item}", "event": "click"},
                     {"user_id": "1", "item_id": "{item}", "event": "rating", "value": 0}]},
         422, "events.1.value: a rating needs a value in [1, 5], got 0.0"),
        ({"events": [], "user_id": "1"}, 422, "events: List should have at least 1 item"),
        ({"user_id": "1", "item_id": "{item}", "event": "click", "value": "NaN"}, 422,
         "value: must be a JSON number"),
        ({"user_id": "1", "item_id": "{item}", "event": "rating", "value": True}, 422,
         "value: must be a JSON number"),
        ({"user_id": "1", "item_id": "{item}", "event": "click",
          "timestamp": "0001-01-01T00:00:00"}, 422, "timestamp: must lie between 1970"),
        ({"user_id": "1", "item_id": "{item}", "event": "click",
          "timestamp": "9999-12-31T23:59:59Z"}, 422, "timestamp: must lie between 1970"),
        # unix seconds however large: pydantic alone reads this as milliseconds (1973)
        ({"user_id": "1", "item_id": "{item}", "event": "click",
          "timestamp": 1e11}, 422, "timestamp: must lie between 1970"),
        ({"user_id": "1", "item_id": "{item}", "event": "click",
          "timestamp": 10**400}, 422, "timestamp: must lie between 1970"),
        ({"events": [{"user_id": "1", "item_id": "{item}", "event": "click"}],
          "timestamp": 1700000000}, 422, "give either one event or events, not both"),
    ],
)  # fmt: skip
def test_bad_feedback_is_refused_with_the_field_named_and_nothing_written(
    loop_client: Callable[..., TestClient],
    reference: Reference,
    store: redis.Redis,
    body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    client = loop_client(feedback_batch_limit=10)
    response = client.post("/feedback", json=_fill(body, reference.items[0]))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert store.xlen(STREAM_KEY) == 0


@pytest.mark.parametrize(
    "raw",
    [
        # JSON's NaN literal (not JSON, but Python's reader takes it)
        b'{"user_id": "1", "item_id": "{item}", "event": "rating", "value": NaN}',
        # a lone surrogate escape: no UTF-8 encoder takes it
        b'{"user_id": "\\ud800", "item_id": "{item}", "event": "click"}',
        b'{"events": [{"user_id": "1\\udfff", "item_id": "{item}", "event": "click"}]}',
        # a repeated key: Python's reader keeps the last, so this would be a purchase
        b'{"user_id": "1", "item_id": "{item}", "event": "click", "event": "purchase"}',
    ],
)
def test_bodies_python_reads_but_utf8_and_json_refuse_are_422(
    loop_client: Callable[..., TestClient], reference: Reference, store: redis.Redis, raw: bytes
) -> None:
    client = loop_client()
    body = raw.replace(b"{item}", reference.items[0].encode())
    response = client.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert error_body(response)["detail"]
    assert store.xlen(STREAM_KEY) == 0


def test_a_time_without_a_zone_is_read_as_utc(
    loop_client: Callable[..., TestClient], reference: Reference, store: redis.Redis
) -> None:
    client = loop_client()
    event = {"user_id": "1", "item_id": reference.items[0], "event": "click"}
    sent = ("2020-01-01T00:00:00", "2020-01-01T01:00:00+01:00", 1577836800, "1577836800")
    for timestamp in sent:
        assert _post(client, {**event, "timestamp": timestamp}).status_code == 202
    stamps = [fields["timestamp"] for _, fields in store.xrange(STREAM_KEY)]
    assert stamps == ["1577836800.000"] * len(sent)


def test_request_id_of_another_user_is_refused(
    loop_client: Callable[..., TestClient], reference: Reference, store: redis.Redis
) -> None:
    client = loop_client()
    served = _recommend(client, reference.users[6], TEACHER)
    response = _post(
        client,
        {"events": [
            {"user_id": reference.users[6], "item_id": reference.items[0], "event": "click"},
            {"user_id": reference.users[7], "item_id": served["items"][0]["item_id"],
             "event": "click", "request_id": served["request_id"]},
        ]},
    )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["detail"] == (
        f"events.1.request_id: request_id {served['request_id']!r} was served to another user"
    )
    assert store.xlen(STREAM_KEY) == 0  # the valid first event was not written either


def test_without_redis_the_loop_routes_do_not_exist(
    make_client: Callable[..., TestClient], loop_redis_url: str, reference: Reference
) -> None:
    click = {"user_id": "1", "item_id": reference.items[0], "event": "click"}
    for client in (
        make_client(admin_token="loop-token"),  # no REDIS_URL
        make_client(admin_token="loop-token", redis_url=loop_redis_url, feedback_enabled=False),
    ):
        # Like the other setting-gated routes: an unknown path, absent from the schema.
        assert error_body(_post(client, click)) == {"detail": "Not Found"}
        assert client.get("/admin/experiment", headers=ADMIN).status_code == 404
        paths = client.get("/openapi.json").json()["paths"]
        assert "/feedback" not in paths and "/admin/experiment" not in paths
        recommended = client.get("/recommend", params={"user_id": reference.users[0]})
        assert recommended.status_code == 200 and recommended.json()["request_id"]


def test_experiment_routes_are_admin_only(
    loop_client: Callable[..., TestClient], make_client: Callable[..., TestClient]
) -> None:
    client = loop_client()
    assert client.get("/admin/experiment").status_code == 401
    wrong = client.get("/admin/experiment", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403
    closed = make_client()  # no ADMIN_TOKEN: the routes do not exist
    assert closed.get("/admin/experiment", headers=ADMIN).status_code == 404
    assert "/admin/experiment" not in closed.get("/openapi.json").json()["paths"]
    assert "/admin/experiment" in client.get("/openapi.json").json()["paths"]


def test_a_rating_of_an_item_not_served_is_compared_with_the_models_prediction(
    loop_client: Callable[..., TestClient], reference: Reference
) -> None:
    client = loop_client()
    user = reference.users[8]
    served = _recommend(client, user, STUDENT, k=3)
    shown = {i["item_id"] for i in served["items"]}
    others = [i for i in reference.items if i not in shown][:2]
    events = [{"user_id": user, "item_id": item, "event": "rating", "value": 5} for item in others]
    assert _post(client, {"events": events}).status_code == 202
    predicted = client.post(
        "/predict_rating",
        json={"pairs": [{"user_id": user, "item_id": item} for item in others]},
        headers=STUDENT,
    ).json()["ratings"]
    student = _readout(client)["variants"]["student"]
    assert student["rated"] == 2 and student["hits"] == 0
    assert student["online_mae"] == pytest.approx(np.mean([5 - r for r in predicted]), abs=1e-4)
