"""`python -m training events export`: the service's feedback event log, as training data.

The service appends every accepted /feedback event to a Redis stream (docs/contracts.md
section 4). An export reads the entries after the position the previous export kept and
appends them to two files in OUT:

* `ratings.csv` (`user_id,item_id,rating,timestamp`): the rating events, in the format of
  the generic CSV loader (`--dataset csv`);
* `interactions.csv`: every other event (click, purchase, dismiss) with its attribution,
  columns INTERACTIONS_HEADER, documented in docs/experiment.md.

Exactly once: `export_state.json` records the last exported stream id together with the
byte length of both files. It is replaced atomically after the rows are on disk; a run
first cuts the files back to the recorded lengths, so rows of an interrupted run are
dropped and then read again from the stream, never lost nor written twice.

`--merge-with DATA_DIR` also writes OUT/merged: the original data with the exported
ratings added (a re-rated pair keeps its newest rating), in a folder the loaders read.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from training.data import load_dataset
from training.durable import fsync_dir

log = logging.getLogger(__name__)

# Written by app/loop_store.py; the two packages share the name through the contract only.
STREAM_KEY = "recsys:events"
RATINGS_FILE = "ratings.csv"
INTERACTIONS_FILE = "interactions.csv"
STATE_FILE = "export_state.json"
LOCK_FILE = ".export.lock"
MERGED_DIR = "merged"
RATINGS_HEADER = ("user_id", "item_id", "rating", "timestamp")
INTERACTIONS_HEADER = (
    "user_id", "item_id", "event", "value", "timestamp", "request_id", "variant",
    "position", "model_version", "experiment", "event_id",
)  # fmt: skip
ML100K_METADATA = ("u.user", "u.item", "u.genre", "u.occupation")


class EventsError(Exception):
    """The export cannot run (another export holds OUT, state and files disagree, ...)."""


@dataclass
class ExportState:
    stream: str
    last_id: str = "0-0"
    ratings_bytes: int = 0
    interactions_bytes: int = 0
    ratings: int = 0
    interactions: int = 0
    lost: int = 0  # entries trimmed before any export read them, so far


@dataclass(frozen=True)
class ExportSummary:
    out_dir: str
    exported_ratings: int
    exported_interactions: int
    total_ratings: int
    total_interactions: int
    last_id: str
    # Events the stream trimmed (MAXLEN) before any export read them: export more often or
    # raise FEEDBACK_STREAM_MAXLEN when this is not 0.
    lost_unread: int
    merged: str | None = None


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@contextlib.contextmanager
def _exclusive(out_dir: Path) -> Iterator[None]:
    with (out_dir / LOCK_FILE).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EventsError(f"{out_dir}: another export is running") from None
        yield


def load_state(out_dir: Path, stream: str) -> ExportState:
    path = out_dir / STATE_FILE
    if not path.exists():
        return ExportState(stream=stream)
    state = ExportState(**json.loads(path.read_text()))
    if state.stream != stream:
        raise EventsError(f"{out_dir} holds an export of stream {state.stream!r}, not {stream!r}")
    return state


def _save_state(out_dir: Path, state: ExportState) -> None:
    tmp = out_dir / (STATE_FILE + ".tmp")
    with tmp.open("w") as handle:
        json.dump(asdict(state), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out_dir / STATE_FILE)
    fsync_dir(out_dir)


def _prepare(path: Path, recorded: int, header: tuple[str, ...]) -> None:
    """Cuts `path` back to the committed length; writes the header into a new file."""
    size = path.stat().st_size if path.exists() else 0
    if size < recorded:
        raise EventsError(f"{path} is shorter ({size} B) than the export state says ({recorded} B)")
    if size > recorded:
        log.warning("dropping %d bytes of an interrupted export from %s", size - recorded, path)
        with path.open("r+b") as handle:
            handle.truncate(recorded)
    if recorded == 0:
        with path.open("w", newline="") as handle:
            csv.writer(handle).writerow(header)


def _lost_unread(client: redis.Redis, stream: str, state: ExportState) -> int:
    """How many entries the stream ever dropped (MAXLEN trimming) before an export read them.

    When even the stream's first entry comes after the kept position, every entry it holds
    is unread, so the entries ever added minus those and minus the ones already exported
    were trimmed unread. One XINFO, so the three numbers belong to the same moment.
    """
    try:
        info = client.xinfo_stream(stream)
    except redis.ResponseError:
        return 0  # no stream yet
    first = info.get("first-entry")
    if not first or _id_key(_text(first[0])) <= _id_key(state.last_id):
        return state.lost
    added = int(info.get("entries-added", 0))
    return max(state.lost, added - int(info["length"]) - (state.ratings + state.interactions))


def _rows(entry_id: str, fields: dict[str, str]) -> tuple[list[str] | None, list[str] | None]:
    event = fields.get("event", "")
    timestamp = str(int(float(fields.get("timestamp") or 0)))
    if event == "rating":
        return [fields["user_id"], fields["item_id"], fields["value"], timestamp], None
    return None, [
        fields.get("user_id", ""), fields.get("item_id", ""), event, fields.get("value", ""),
        timestamp, fields.get("request_id", ""), fields.get("variant", ""),
        fields.get("position", ""), fields.get("model_version", ""),
        fields.get("experiment", ""), entry_id,
    ]  # fmt: skip


def export_events(
    client: redis.Redis, out_dir: Path, *, stream: str = STREAM_KEY, batch: int = 1000
) -> ExportSummary:
    """Appends the stream's entries after the kept position to OUT's files (see module)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        state = load_state(out_dir, stream)
        ratings_path, interactions_path = out_dir / RATINGS_FILE, out_dir / INTERACTIONS_FILE
        _prepare(ratings_path, state.ratings_bytes, RATINGS_HEADER)
        _prepare(interactions_path, state.interactions_bytes, INTERACTIONS_HEADER)
        lost = _lost_unread(client, stream, state) - state.lost
        state.lost += lost
        if lost:
            log.warning("%d events of %s were trimmed before any export read them", lost, stream)
        before = (state.ratings, state.interactions)
        while True:
            entries = client.xrange(stream, min=f"({state.last_id}", count=batch)
            if not entries:
                break
            _append(out_dir, state, [(_text(i), _decoded(f or {})) for i, f in entries])
            _save_state(out_dir, state)
            if len(entries) < batch:
                break
        _save_state(out_dir, state)
        return ExportSummary(
            out_dir=str(out_dir),
            exported_ratings=state.ratings - before[0],
            exported_interactions=state.interactions - before[1],
            total_ratings=state.ratings,
            total_interactions=state.interactions,
            last_id=state.last_id,
            lost_unread=lost,
        )


def _decoded(fields: dict[Any, Any]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in fields.items()}


def _append(out_dir: Path, state: ExportState, entries: list[tuple[str, dict[str, str]]]) -> None:
    """Appends one batch to both files and syncs them; `state` then describes them."""
    with (
        (out_dir / RATINGS_FILE).open("a", newline="") as ratings,
        (out_dir / INTERACTIONS_FILE).open("a", newline="") as interactions,
    ):
        rating_writer, interaction_writer = csv.writer(ratings), csv.writer(interactions)
        for entry_id, fields in entries:
            rating, interaction = _rows(entry_id, fields)
            if rating is not None:
                rating_writer.writerow(rating)
                state.ratings += 1
            if interaction is not None:
                interaction_writer.writerow(interaction)
                state.interactions += 1
            state.last_id = entry_id
        for handle in (ratings, interactions):
            handle.flush()
            os.fsync(handle.fileno())
        state.ratings_bytes = ratings.tell()
        state.interactions_bytes = interactions.tell()


# -- merging with the original data ----------------------------------------------------


def _exported_ratings(out_dir: Path) -> list[tuple[str, str, float, int]]:
    rows = []
    with (out_dir / RATINGS_FILE).open(newline="") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for user, item, rating, timestamp in reader:
            rows.append((user, item, float(rating), int(timestamp)))
    return rows


def merge_with(out_dir: Path, data_dir: Path, *, dataset: str) -> Path:
    """OUT/merged: the original ratings plus the exported ones, newest per (user, item).

    ml-100k gives an ml-100k folder (u.data and the metadata files; no u1..u5 folds, since
    they do not hold the new ratings: train it with --split none, random or temporal);
    every other format gives a ratings.csv for `--dataset csv`.
    """
    original = load_dataset(data_dir, dataset=dataset)
    merged: dict[tuple[str, str], tuple[float, int]] = {}
    users, items = original.user_ids, original.item_ids
    r = original.ratings
    for u, i, rating, ts in zip(
        r.user.tolist(), r.item.tolist(), r.rating.tolist(), r.timestamp.tolist(), strict=True
    ):
        merged[(users[u - 1], items[i - 1])] = (rating, ts)
    for user, item, rating, ts in _exported_ratings(out_dir):
        merged[(user, item)] = (rating, ts)
    target = out_dir / MERGED_DIR
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    if dataset == "ml-100k":
        for name in ML100K_METADATA:
            if (data_dir / name).exists():
                shutil.copy2(data_dir / name, target / name)
        with (target / "u.data").open("w") as handle:
            for (user, item), (rating, ts) in merged.items():
                handle.write(f"{user}\t{item}\t{rating:g}\t{ts}\n")
    else:
        with (target / RATINGS_FILE).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(RATINGS_HEADER)
            for (user, item), (rating, ts) in merged.items():
                writer.writerow([user, item, f"{rating:g}", ts])
    log.info("merged %d ratings into %s", len(merged), target)
    return target


# -- command line ---------------------------------------------------------------------


def add_events_parser(sub: Any) -> None:
    """`events export` under the training CLI's sub-commands."""
    events = sub.add_parser("events", help="export the service's feedback event log")
    events.set_defaults(until=None)
    actions = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    export = actions.add_parser(
        "export",
        help="append new rating events to OUT/ratings.csv, the others to OUT/interactions.csv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    export.add_argument("--redis-url", required=True, help="the service's REDIS_URL")
    export.add_argument("--out", type=Path, required=True, help="export folder (kept between runs)")
    export.add_argument("--stream", default=STREAM_KEY, help=f"stream key (default {STREAM_KEY})")
    export.add_argument(
        "--merge-with", type=Path, default=None, help="original data folder to merge with"
    )
    export.add_argument(
        "--dataset", default="ml-100k", help="format of --merge-with (default ml-100k)"
    )


def run_events(args: argparse.Namespace) -> int:
    client = redis.Redis.from_url(args.redis_url, socket_timeout=30)
    try:
        summary = export_events(client, args.out, stream=args.stream)
    except redis.RedisError as err:
        raise EventsError(f"cannot read {args.stream} at {args.redis_url}: {err}") from err
    finally:
        client.close()
    if args.merge_with is not None:
        merged = merge_with(args.out, args.merge_with, dataset=args.dataset)
        summary = ExportSummary(**{**asdict(summary), "merged": str(merged)})
    sys.stdout.write(json.dumps(asdict(summary)) + "\n")
    return 0
