"""`python -m training events export`: the service's event log, written by the real app
into a real Redis (DB 13), exported incrementally without loss or duplication, and read
back by the data loaders."""

from __future__ import annotations

import csv
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

import training.events as events
from app.config import Settings
from app.main import create_app
from training.__main__ import main
from training.data import load_dataset


@pytest.fixture
def service(bundle_dir: Path, loop_redis_url: str) -> Iterator[TestClient]:
    settings = Settings(
        model_dir=bundle_dir,
        redis_url=loop_redis_url,
        ort_providers="CPUExecutionProvider",
        ort_intra_op_threads=1,
        access_log=False,
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def client(loop_redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(loop_redis_url, decode_responses=True)
    yield connection
    connection.close()


def _ids(bundle: Path, kind: str) -> list[str]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    ids = json.loads((bundle / manifest["files"]["id_maps"]["file"]).read_text())
    return [str(i) for i in ids[kind]]


def _send(service: TestClient, batch: list[dict[str, Any]]) -> None:
    response = service.post("/feedback", json={"events": batch})
    assert response.status_code == 202, response.text


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_export_is_incremental_and_writes_each_event_once(
    service: TestClient, client: redis.Redis, bundle_dir: Path, tmp_path: Path
) -> None:
    users, items = _ids(bundle_dir, "users"), _ids(bundle_dir, "items")
    served = service.get("/recommend", params={"user_id": users[0], "k": 3}).json()
    _send(service, [
        {"user_id": users[0], "item_id": items[0], "event": "rating", "value": 4},
        {"user_id": users[0], "item_id": served["items"][0]["item_id"], "event": "click",
         "request_id": served["request_id"]},
        {"user_id": "someone-new", "item_id": items[1], "event": "rating", "value": 2.5,
         "timestamp": 1_700_000_000},
    ])  # fmt: skip
    out = tmp_path / "export"
    first = events.export_events(client, out)
    assert (first.exported_ratings, first.exported_interactions) == (2, 1)
    ratings = _rows(out / events.RATINGS_FILE)
    assert ratings[0] == list(events.RATINGS_HEADER)
    assert ratings[1][:3] == [users[0], items[0], "4.0"]
    assert ratings[2] == ["someone-new", items[1], "2.5", "1700000000"]
    interactions = _rows(out / events.INTERACTIONS_FILE)
    assert interactions[0] == list(events.INTERACTIONS_HEADER)
    row = dict(zip(events.INTERACTIONS_HEADER, interactions[1], strict=True))
    assert row["event"] == "click" and row["request_id"] == served["request_id"]
    assert row["variant"] == served["variant"] and row["position"] == "1"

    # Nothing new: nothing written. Then only the new events are appended.
    again = events.export_events(client, out)
    assert (again.exported_ratings, again.exported_interactions) == (0, 0)
    _send(service, [
        {"user_id": users[1], "item_id": items[2], "event": "dismiss"},
        {"user_id": users[1], "item_id": items[3], "event": "rating", "value": 5},
    ])  # fmt: skip
    third = events.export_events(client, out)
    assert (third.exported_ratings, third.exported_interactions) == (1, 1)
    assert (third.total_ratings, third.total_interactions) == (3, 2)
    stream_ids = [entry_id for entry_id, _ in client.xrange(events.STREAM_KEY)]
    assert third.last_id == stream_ids[-1]
    exported_ids = [r[-1] for r in _rows(out / events.INTERACTIONS_FILE)[1:]]
    assert exported_ids == [stream_ids[1], stream_ids[3]]
    assert len(_rows(out / events.RATINGS_FILE)) == 1 + 3


def test_an_interrupted_export_is_redone_exactly_once(
    service: TestClient,
    client: redis.Redis,
    bundle_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    users, items = _ids(bundle_dir, "users"), _ids(bundle_dir, "items")
    _send(service, [{"user_id": users[0], "item_id": items[0], "event": "rating", "value": 3}])
    out = tmp_path / "export"
    events.export_events(client, out)
    _send(service, [
        {"user_id": users[1], "item_id": items[i], "event": "rating", "value": 4}
        for i in range(1, 6)
    ])  # fmt: skip

    def crash(out_dir: Path, state: events.ExportState) -> None:
        raise KeyboardInterrupt  # the rows are on disk, the new position is not

    monkeypatch.setattr(events, "_save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        events.export_events(client, out, batch=2)
    assert len(_rows(out / events.RATINGS_FILE)) == 1 + 1 + 2  # half a run on disk
    monkeypatch.undo()
    redone = events.export_events(client, out, batch=2)
    assert redone.exported_ratings == 5
    rows = _rows(out / events.RATINGS_FILE)[1:]
    assert [r[1] for r in rows] == items[0:6]


def test_exported_ratings_load_and_merge_with_the_original_data(
    service: TestClient,
    client: redis.Redis,
    loop_redis_url: str,
    synthetic_ml100k: Path,
    tmp_path: Path,
) -> None:
    original = load_dataset(synthetic_ml100k, dataset="ml-100k")
    first = original.ratings
    known_user = original.user_ids[int(first.user[0]) - 1]
    known_item = original.item_ids[int(first.item[0]) - 1]
    new_rating = 1.0 if float(first.rating[0]) != 1.0 else 5.0
    _send(service, [
        {"user_id": known_user, "item_id": known_item, "event": "rating", "value": new_rating},
        {"user_id": "newcomer", "item_id": known_item, "event": "rating", "value": 4},
        {"user_id": "newcomer", "item_id": known_item, "event": "click"},
    ])  # fmt: skip
    out = tmp_path / "export"
    code = main([
        "events", "export", "--redis-url", loop_redis_url, "--out", str(out),
        "--merge-with", str(synthetic_ml100k), "--dataset", "ml-100k",
    ])  # fmt: skip
    assert code == 0
    exported = load_dataset(out, dataset="csv")
    assert len(exported.ratings) == 2
    merged = load_dataset(out / events.MERGED_DIR, dataset="ml-100k")
    assert len(merged.ratings) == len(first) + 1  # one pair re-rated, one new
    index = {
        (merged.user_ids[u - 1], merged.item_ids[i - 1]): r
        for u, i, r in zip(
            merged.ratings.user.tolist(),
            merged.ratings.item.tolist(),
            merged.ratings.rating.tolist(),
            strict=True,
        )
    }
    assert index[(known_user, known_item)] == new_rating
    assert index[("newcomer", known_item)] == 4.0
    # Demographics and titles came along.
    assert merged.feature_map.user_fields == original.feature_map.user_fields


def test_a_trimmed_stream_is_reported(client: redis.Redis, tmp_path: Path) -> None:
    fields = {"user_id": "u", "item_id": "i", "event": "click", "value": "", "timestamp": "1"}
    for _ in range(5):
        client.xadd(events.STREAM_KEY, fields, maxlen=2, approximate=False)
    summary = events.export_events(client, tmp_path / "export")
    assert summary.lost_unread == 3
    assert summary.exported_interactions == 2
    client.xadd(events.STREAM_KEY, fields, maxlen=2, approximate=False)
    later = events.export_events(client, tmp_path / "export")
    assert later.lost_unread == 0 and later.exported_interactions == 1
    for _ in range(4):  # two of them are trimmed before the next export
        client.xadd(events.STREAM_KEY, fields, maxlen=2, approximate=False)
    last = events.export_events(client, tmp_path / "export")
    assert last.lost_unread == 2 and last.exported_interactions == 2


def test_one_export_at_a_time_per_folder(client: redis.Redis, tmp_path: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    with (out / events.LOCK_FILE).open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(events.EventsError, match="another export is running"):
            events.export_events(client, out)


def test_the_cli_reports_a_bad_redis_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["events", "export", "--redis-url", "redis://127.0.0.1:1/0", "--out",
                 str(tmp_path)])  # fmt: skip
    assert code == 2
    assert "cannot read recsys:events" in capsys.readouterr().err


def test_a_folder_with_rows_but_no_state_is_refused_untouched(
    client: redis.Redis, tmp_path: Path
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    mine = b"user_id,item_id,rating,timestamp\r\n1,2,4,0\r\n"
    (out / events.RATINGS_FILE).write_bytes(mine)
    client.xadd(events.STREAM_KEY, {"user_id": "u", "item_id": "i", "event": "click"})
    with pytest.raises(
        events.EventsError, match=r"holds rows, but .*export_state\.json is missing"
    ):
        events.export_events(client, out)
    assert (out / events.RATINGS_FILE).read_bytes() == mine


def test_an_export_interrupted_before_its_first_state_is_redone(
    client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "export"
    empty = events.export_events(client, out)  # nothing in the stream yet
    assert (empty.total_ratings, empty.total_interactions) == (0, 0)
    client.xadd(events.STREAM_KEY, {"user_id": "u", "item_id": "i", "event": "rating",
                                    "value": "4.0", "timestamp": "5"})  # fmt: skip
    later = events.export_events(client, out)
    assert later.exported_ratings == 1
    assert "dropping" not in caplog.text  # the headers were committed with the first state
    # A header alone, without a state (a crash right after writing it), is taken over.
    (out / events.STATE_FILE).unlink()
    (out / events.RATINGS_FILE).write_bytes(b"user_id,item_id,rating,timestamp\r\n")
    (out / events.INTERACTIONS_FILE).unlink()
    again = events.export_events(client, out)
    assert again.exported_ratings == 1
    # An empty export by an earlier version recorded 0 bytes beside its headers.
    (out / events.STATE_FILE).write_text(json.dumps({"stream": events.STREAM_KEY}))
    (out / events.RATINGS_FILE).write_bytes(b"user_id,item_id,rating,timestamp\r\n")
    caplog.clear()
    assert events.export_events(client, out).exported_ratings == 1
    assert "dropping" not in caplog.text
    assert _rows(out / events.RATINGS_FILE) == [list(events.RATINGS_HEADER), ["u", "i", "4.0", "5"]]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "Expecting value"),
        ("[1, 2]", "not a JSON object"),
        ('{"stream": "recsys:events", "bogus": 1}', "bogus"),
        ('{"stream": "recsys:events", "ratings_bytes": "x"}', "ratings_bytes must be"),
        ('{"stream": "recsys:events", "ratings_bytes": -5}', "ratings_bytes must be"),
        ('{"stream": "recsys:events", "last_id": "yesterday"}', "last_id 'yesterday'"),
    ],
)
def test_a_damaged_state_is_named_not_a_traceback(
    client: redis.Redis, tmp_path: Path, content: str, reason: str
) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / events.STATE_FILE).write_text(content)
    with pytest.raises(events.EventsError, match=r"export_state\.json: not an export state") as err:
        events.export_events(client, out)
    assert reason in str(err.value)


def test_entries_the_service_could_not_have_written_are_skipped_and_counted(
    client: redis.Redis, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = [
        {"event": "rating", "item_id": "i", "value": "4"},  # no user
        {"event": "rating", "user_id": "u", "item_id": "i", "value": "abc"},
        {"event": "rating", "user_id": "u", "item_id": "i", "value": "9"},
        {"event": "click", "user_id": "u", "item_id": "i", "timestamp": "abc"},
        {"event": "rating", "user_id": "99\t1\t1\t880000000\n98", "item_id": "10", "value": "4"},
        {"event": "click", "user_id": "u", "item_id": "L" * 129},
    ]
    ids = [client.xadd(events.STREAM_KEY, fields) for fields in bad]
    client.xadd(events.STREAM_KEY, {"event": "rating", "user_id": "u", "item_id": "i",
                                    "value": "3.5", "timestamp": "7"})  # fmt: skip
    summary = events.export_events(client, tmp_path / "export")
    assert summary.skipped_malformed == len(bad)
    assert (summary.exported_ratings, summary.exported_interactions) == (1, 0)
    assert _rows(tmp_path / "export" / events.RATINGS_FILE)[1:] == [["u", "i", "3.5", "7"]]
    for entry_id in ids:
        assert f"skipping stream entry {entry_id}" in caplog.text
    assert events.export_events(client, tmp_path / "export").skipped_malformed == 0


def test_a_failed_merge_leaves_the_previous_one_whole(
    client: redis.Redis, synthetic_ml100k: Path, tmp_path: Path
) -> None:
    client.xadd(events.STREAM_KEY, {"event": "rating", "user_id": "josé-ł", "item_id": "1",
                                    "value": "4", "timestamp": "1"})  # fmt: skip
    out = tmp_path / "export"
    events.export_events(client, out)
    merged = events.merge_with(out, synthetic_ml100k, dataset="ml-100k")
    loaded = load_dataset(merged, dataset="ml-100k")
    assert "josé-ł" in loaded.user_ids  # read back as sent (UTF-8 after a byte-order mark)
    before = (merged / "u.data").read_bytes()
    with (out / events.RATINGS_FILE).open("a") as handle:
        handle.write("u,i,four,1\r\n")  # a hand edit
    with pytest.raises(events.EventsError, match=r"ratings\.csv:3: could not convert"):
        events.merge_with(out, synthetic_ml100k, dataset="ml-100k")
    assert (merged / "u.data").read_bytes() == before


def test_the_cli_checks_the_merge_format_before_exporting(
    loop_redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["events", "export", "--redis-url", loop_redis_url, "--out", str(tmp_path / "x"),
              "--merge-with", str(tmp_path), "--dataset", "bogus"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
