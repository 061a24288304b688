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
dropped and then read again from the stream, never lost nor written twice. A folder whose
files hold rows but that has no state is refused: the cut would drop rows no export of
this folder wrote.

An entry the service could not have written (no user or item id, an id that breaks the
rules of contract/ids.py, a rating that is not a number in (0, 5], a timestamp that is not
a number) is skipped with a warning naming its id, and counted (`skipped_malformed`): it
cannot become a row, and stopping at it would stop every later export there.

`--merge-with DATA_DIR` also writes OUT/merged: the original data with the exported
ratings added (a re-rated pair keeps its newest rating), in a folder the loaders read. It
is written beside and then renamed into place, so a merge that fails leaves the previous
one whole.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import fcntl
import io
import json
import logging
import math
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import redis

from contract.ids import MAX_ID_LENGTH, control_character
from training.cli_args import path_arg
from training.data import DATASETS, load_dataset
from training.durable import fsync_dir, fsync_file

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
    skipped: int = 0  # malformed entries skipped, so far


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
    # Entries of this run that could not become rows (see the module docstring).
    skipped_malformed: int = 0
    merged: str | None = None


class _MalformedEntryError(ValueError):
    """A stream entry that cannot become a row; the reason is the message."""


_STREAM_ID = re.compile(r"[0-9]+-[0-9]+")


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
    try:
        state = _checked_state(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:
        raise EventsError(
            f"{path}: not an export state ({err}); restore it, or export into a new folder"
        ) from None
    if state.stream != stream:
        raise EventsError(f"{out_dir} holds an export of stream {state.stream!r}, not {stream!r}")
    return state


def _checked_state(raw: object) -> ExportState:
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    state = ExportState(**raw)  # TypeError names a missing or unknown key
    if not isinstance(state.stream, str):
        raise ValueError("stream must be a string")
    if not isinstance(state.last_id, str) or not _STREAM_ID.fullmatch(state.last_id):
        raise ValueError(f"last_id {state.last_id!r} is not a stream id")
    for field in fields(state):
        value = getattr(state, field.name)
        if field.type == "int" and (type(value) is not int or value < 0):
            raise ValueError(f"{field.name} must be a non-negative integer, not {value!r}")
    return state


def _save_state(out_dir: Path, state: ExportState) -> None:
    tmp = out_dir / (STATE_FILE + ".tmp")
    with tmp.open("w") as handle:
        json.dump(asdict(state), handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, out_dir / STATE_FILE)
    fsync_dir(out_dir)


def _header_bytes(header: tuple[str, ...]) -> bytes:
    text = io.StringIO(newline="")
    csv.writer(text).writerow(header)
    return text.getvalue().encode()


def _prepare(path: Path, recorded: int, header: tuple[str, ...], *, fresh: bool) -> int:
    """Cuts `path` back to the committed length, or writes the header into a new file;
    the length it then has. `fresh`: no state yet, so only a header may be there (what an
    export interrupted before its first state wrote)."""
    size = path.stat().st_size if path.exists() else 0
    expected = _header_bytes(header)
    only_header = size == len(expected) and path.read_bytes() == expected
    if size < recorded:
        raise EventsError(f"{path} is shorter ({size} B) than the export state says ({recorded} B)")
    if size > recorded and not (recorded == 0 and only_header):
        if fresh:
            raise EventsError(
                f"{path} holds rows, but {path.parent / STATE_FILE} is missing: no export of "
                "this folder wrote them (or its state was lost); export into a new folder"
            )
        log.warning("dropping %d bytes of an interrupted export from %s", size - recorded, path)
        with path.open("r+b") as handle:
            handle.truncate(recorded)
    if recorded == 0:
        with path.open("wb") as handle:
            handle.write(expected)
            handle.flush()
            os.fsync(handle.fileno())
        return len(expected)
    return recorded


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


def _number(fields: dict[str, str], name: str) -> float:
    text = fields.get(name, "")
    try:
        value = float(text)
    except ValueError:
        raise _MalformedEntryError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise _MalformedEntryError(f"{name} {text!r} is not a finite number")
    return value


def _entry_id(fields: dict[str, str], name: str) -> str:
    text = fields.get(name, "").strip()
    if not text:
        raise _MalformedEntryError(f"no {name}")
    control = control_character(text)
    if control is not None:
        raise _MalformedEntryError(f"{name} {text!r} holds a control character ({control})")
    if len(text) > MAX_ID_LENGTH:
        raise _MalformedEntryError(f"{name} is {len(text)} characters long")
    return text


def _rows(entry_id: str, fields: dict[str, str]) -> tuple[list[str] | None, list[str] | None]:
    """(ratings row, interactions row) of one entry, one of them None; _MalformedEntryError when
    it cannot be either (the loaders would refuse it, or misread it)."""
    user, item = _entry_id(fields, "user_id"), _entry_id(fields, "item_id")
    event = fields.get("event", "")
    stamp = _number(fields, "timestamp") if fields.get("timestamp") else 0.0
    if abs(stamp) >= 2.0**63:
        raise _MalformedEntryError(f"timestamp {stamp!r} is out of range")
    timestamp = str(int(stamp))
    if event == "rating":
        rating = _number(fields, "value")
        if not 0.0 < rating <= 5.0:  # the loaders' range
            raise _MalformedEntryError(f"rating {rating!r} outside (0, 5]")
        return [user, item, str(rating), timestamp], None
    return None, [
        user, item, event, fields.get("value", ""), timestamp, fields.get("request_id", ""),
        fields.get("variant", ""), fields.get("position", ""),
        fields.get("model_version", ""), fields.get("experiment", ""), entry_id,
    ]  # fmt: skip


def export_events(
    client: redis.Redis, out_dir: Path, *, stream: str = STREAM_KEY, batch: int = 1000
) -> ExportSummary:
    """Appends the stream's entries after the kept position to OUT's files (see module)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(out_dir):
        fresh = not (out_dir / STATE_FILE).exists()
        state = load_state(out_dir, stream)
        state.ratings_bytes = _prepare(
            out_dir / RATINGS_FILE, state.ratings_bytes, RATINGS_HEADER, fresh=fresh
        )
        state.interactions_bytes = _prepare(
            out_dir / INTERACTIONS_FILE, state.interactions_bytes, INTERACTIONS_HEADER, fresh=fresh
        )
        if fresh:  # from here on, the folder's files are this export's
            _save_state(out_dir, state)
        lost = _lost_unread(client, stream, state) - state.lost
        state.lost += lost
        if lost:
            log.warning("%d events of %s were trimmed before any export read them", lost, stream)
        before = (state.ratings, state.interactions, state.skipped)
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
            skipped_malformed=state.skipped - before[2],
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
        for entry_id, entry in entries:
            state.last_id = entry_id
            try:
                rating, interaction = _rows(entry_id, entry)
            except _MalformedEntryError as err:
                log.warning("skipping stream entry %s: %s", entry_id, err)
                state.skipped += 1
                continue
            if rating is not None:
                rating_writer.writerow(rating)
                state.ratings += 1
            if interaction is not None:
                interaction_writer.writerow(interaction)
                state.interactions += 1
        for handle in (ratings, interactions):
            handle.flush()
            os.fsync(handle.fileno())
        state.ratings_bytes = ratings.tell()
        state.interactions_bytes = interactions.tell()


# -- merging with the original data ----------------------------------------------------


def _exported_ratings(out_dir: Path) -> list[tuple[str, str, float, int]]:
    path = out_dir / RATINGS_FILE
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for row in reader:
            try:
                user, item, rating, timestamp = row
                rows.append((user, item, float(rating), int(timestamp)))
            except ValueError as err:  # a hand-edited file: wrong field count or number
                raise EventsError(f"{path}:{reader.line_num}: {err}") from None
    return rows


def _write_merged(
    target: Path, merged: dict[tuple[str, str], tuple[float, int]], *, ml100k: bool
) -> None:
    if ml100k:
        # The ml-100k reader takes latin-1 unless a byte-order mark says UTF-8: with it, an
        # exported id outside latin-1 (or a latin-1 one) reads back as it was sent.
        with (target / "u.data").open("w", encoding="utf-8-sig") as handle:
            for (user, item), (rating, ts) in merged.items():
                handle.write(f"{user}\t{item}\t{rating:g}\t{ts}\n")
    else:
        with (target / RATINGS_FILE).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(RATINGS_HEADER)
            for (user, item), (rating, ts) in merged.items():
                writer.writerow([user, item, f"{rating:g}", ts])
    for path in target.iterdir():
        fsync_file(path)
    fsync_dir(target)


def _replace_dir(staged: Path, target: Path) -> None:
    """`staged` becomes `target`; the old `target` goes only once the new one is there."""
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


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
    staged = target.with_name(target.name + ".tmp")
    if staged.exists():
        shutil.rmtree(staged)  # left by a merge that failed
    staged.mkdir()
    if dataset == "ml-100k":
        for name in ML100K_METADATA:
            if (data_dir / name).exists():
                shutil.copy2(data_dir / name, staged / name)
    _write_merged(staged, merged, ml100k=dataset == "ml-100k")
    _replace_dir(staged, target)
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
    export.add_argument(
        "--out", type=path_arg, required=True, help="export folder (kept between runs)"
    )
    export.add_argument("--stream", default=STREAM_KEY, help=f"stream key (default {STREAM_KEY})")
    export.add_argument(
        "--merge-with", type=path_arg, default=None, help="original data folder to merge with"
    )
    export.add_argument(
        "--dataset",
        default="ml-100k",
        choices=DATASETS,
        help="format of --merge-with (default ml-100k)",
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
