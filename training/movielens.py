"""Columnar readers for the rating and item files of each supported format.

Each reader has a fast path (pyarrow columns, vectorised checks) and, only when that path
finds a problem, a slow path that walks the lines to report the first bad one, so the
messages are as precise as a row-by-row reader's: file, line and what is wrong.

A ratings CSV names its columns in a header line, in any order: see `RATING_COLUMNS`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contract.ids import MAX_ID_LENGTH, control_character
from training.columnar import (
    FLOAT,
    IDS,
    NUMBER,
    TEXT,
    DataError,
    Layout,
    MalformedError,
    csv_header,
    data_lines,
    encoding_of,
    first_line,
    floats,
    id_codes,
    read_columns,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Header names (case-insensitive) of a ratings CSV and the column each one stands for.
RATING_COLUMNS = {
    "userid": "user",
    "user_id": "user",
    "user": "user",
    "movieid": "item",
    "movie_id": "item",
    "itemid": "item",
    "item_id": "item",
    "item": "item",
    "rating": "rating",
    "timestamp": "timestamp",
}
ITEM_COLUMNS = {
    **{name: role for name, role in RATING_COLUMNS.items() if role == "item"},
    "title": "title",
    "genres": "genres",
}
RATINGS_HEADER_HELP = (
    "a ratings CSV starts with a header naming its columns in any order: userId (or "
    "user_id, user), movieId (or item_id, item), rating, and optionally timestamp"
)
ITEMS_HEADER_HELP = (
    "an items CSV starts with a header naming movieId (or item_id, item), title and genres"
)
RATING_ROLES = ("user", "item", "rating", "timestamp")
NO_GENRES = "(no genres listed)"


@dataclass
class RawRatings:
    """Ratings before indexing: per-row codes into the distinct raw ids."""

    user_codes: np.ndarray  # int32 [N], index into user_values
    user_values: np.ndarray  # str [U], distinct raw user ids, sorted
    item_codes: np.ndarray
    item_values: np.ndarray
    rating: np.ndarray  # float32 [N]
    timestamp: np.ndarray  # int64 [N]


@dataclass
class RawItems:
    """One entry per distinct item of an items file (a repeated id keeps its last line)."""

    ids: np.ndarray  # str [M]
    titles: list[str]
    genres: list[list[str]]
    years: np.ndarray  # float64 [M], NaN where none is known

    @classmethod
    def empty(cls) -> RawItems:
        return cls(ids=np.zeros(0, str), titles=[], genres=[], years=np.zeros(0))


@dataclass(frozen=True)
class DelimitedFile:
    """A delimited file, the role of each field ('' = ignored) and its header, if any."""

    path: Path
    layout: Layout
    roles: tuple[str, ...]
    header: tuple[str, ...] = ()
    min_fields: int = 0

    def position(self, role: str) -> int:
        return self.roles.index(role)

    def fields_problem(self, found: int) -> str | None:
        expected, sep = self.layout.n_fields, self.layout.delimiter
        if self.header:
            if found == expected:
                return None
            return f"expected {','.join(self.header)} ({expected} fields), found {found}"
        if found < self.min_fields:
            return (
                f"expected {self.min_fields} fields separated by {sep!r}, found {found} "
                "(truncated or wrong format?)"
            )
        if found != expected:
            return (
                f"expected {expected} fields separated by {sep!r} like the first line, "
                f"found {found}"
            )
        return None


def _slow_path(
    source: DelimitedFile, problem: Callable[[list[str]], str | None]
) -> DataError | None:
    """The first line that `fields_problem` or `problem` rejects, as a DataError."""
    for number, fields in data_lines(source.path, source.layout):
        message = source.fields_problem(len(fields)) or problem(fields)
        if message:
            return DataError(f"{source.path}:{number}: {message}")
    return None


def _read(
    source: DelimitedFile, fast: Callable[[], T], problem: Callable[[list[str]], str | None]
) -> T:
    try:
        return fast()
    except MalformedError as err:
        found = _slow_path(source, problem)
        # Both paths check the same rules; the fallback names pyarrow's own finding.
        raise found or DataError(f"{source.path}: {err}") from None


# ---------------------------------------------------------------- ratings


def separated_ratings(path: Path, sep: str) -> DelimitedFile:
    """u.data (tab), ratings.dat ('::'): user, item, rating[, timestamp[, ignored...]]."""
    encoding = encoding_of(path, "latin-1")
    first = first_line(path, encoding)
    if first is None:
        raise DataError(f"{path}: no ratings")
    n_fields = max(len(first[1].split(sep)), 3)
    roles = (*RATING_ROLES, *[""] * n_fields)[:n_fields]
    layout = Layout(delimiter=sep, n_fields=n_fields, encoding=encoding)
    return DelimitedFile(path, layout, roles, min_fields=3)


def csv_ratings(path: Path) -> DelimitedFile:
    """A ratings CSV whose header names the columns (see RATING_COLUMNS)."""
    line, header = csv_header(path)
    roles = _roles(path, line, header, RATING_COLUMNS, RATINGS_HEADER_HELP)
    for role in ("user", "item", "rating"):
        if role not in roles:
            raise DataError(
                f"{path}:{line}: the header has no {role} column; {RATINGS_HEADER_HELP}"
            )
    layout = Layout(
        delimiter=",", n_fields=len(header), encoding="utf-8", quoted=True, header_line=line
    )
    return DelimitedFile(path, layout, roles, header=tuple(header))


def _roles(
    path: Path, line: int, header: list[str], names: dict[str, str], help_text: str
) -> tuple[str, ...]:
    roles: list[str] = []
    for name in header:
        role = names.get(name.lower())
        if role is None:
            raise DataError(f"{path}:{line}: unknown column {name!r} in the header; {help_text}")
        if role in roles:
            other = header[roles.index(role)]
            raise DataError(f"{path}:{line}: columns {other!r} and {name!r} both name the {role}")
        roles.append(role)
    return tuple(roles)


def read_ratings(source: DelimitedFile) -> RawRatings:
    """Ratings of one file; DataError naming file and line for anything malformed."""
    ratings = _read(
        source, lambda: _ratings_fast(source), lambda fields: _rating_problem(source, fields)
    )
    if len(ratings.rating) == 0:
        raise DataError(f"{source.path}: no ratings")
    return ratings


def _ratings_fast(source: DelimitedFile) -> RawRatings:
    if len(source.roles) < source.min_fields:
        raise MalformedError("too few fields")
    roles = [role for role in RATING_ROLES if role in source.roles]
    kinds = {"user": IDS, "item": IDS, "rating": FLOAT, "timestamp": FLOAT}
    table = read_columns(
        source.path, source.layout, {source.position(role): kinds[role] for role in roles}
    )
    # Each column is released as soon as it is converted, to bound the peak memory.
    columns = {role: table.column(f"f{source.position(role)}") for role in roles}
    del table
    encoding = source.layout.encoding
    user_codes, user_values = id_codes(columns.pop("user"), encoding)
    item_codes, item_values = id_codes(columns.pop("item"), encoding)
    if np.any(user_values == "") or np.any(item_values == ""):
        raise MalformedError("empty id")
    if source.layout.delimiter == "::" and (_colon_edged(user_values) or _colon_edged(item_values)):
        raise MalformedError("an id next to a stray ':'")
    rating = floats(columns.pop("rating"))
    if not np.all((rating > 0.0) & (rating <= 5.0)):  # NaN (empty, 'nan') fails too
        raise MalformedError("rating outside (0, 5]")
    timestamp = np.zeros(len(rating), np.int64)
    if "timestamp" in columns:
        stamps = floats(pc.fill_null(columns.pop("timestamp"), 0.0))  # an empty cell is 0
        if not np.all(np.abs(stamps) < 2.0**63):  # NaN fails too
            raise MalformedError("timestamp is not an integer")
        timestamp = stamps.astype(np.int64)  # truncates toward zero, as int(float(text))
    return RawRatings(
        user_codes=user_codes,
        user_values=user_values,
        item_codes=item_codes,
        item_values=item_values,
        rating=rating.astype(np.float32),
        timestamp=timestamp,
    )


def _colon_edged(ids: np.ndarray) -> bool:
    # In a '::' file, '1:::5' splits into '1' and ':5': a stray colon, not an id ':5'.
    return bool(np.any(np.strings.startswith(ids, ":") | np.strings.endswith(ids, ":")))


def _id_problem(source: DelimitedFile, role: str, text: str) -> str | None:
    if not text:
        return f"empty {role} id"
    control = control_character(text)
    if control is not None:
        return f"{role} id {text!r} holds a control character ({control})"
    if len(text) > MAX_ID_LENGTH:
        return (
            f"{role} id {text[:20]!r}... is {len(text)} characters long (at most {MAX_ID_LENGTH})"
        )
    if source.layout.delimiter == "::" and (text.startswith(":") or text.endswith(":")):
        return f"{role} id {text!r} next to a stray ':' (fields are separated by '::')"
    return None


def _rating_problem(source: DelimitedFile, fields: list[str]) -> str | None:
    for role in ("user", "item"):
        problem = _id_problem(source, role, fields[source.position(role)].strip())
        if problem:
            return problem
    text = fields[source.position("rating")]
    if not NUMBER.fullmatch(text):
        return f"rating {text!r} is not a number"
    value = float(text)
    if not 0.0 < value <= 5.0:
        return f"rating {value} outside (0, 5]"
    if "timestamp" in source.roles:
        text = fields[source.position("timestamp")]
        if text.strip() and not (NUMBER.fullmatch(text) and abs(float(text)) < 2.0**63):
            return f"timestamp {text!r} is not an integer"
    return None


# ---------------------------------------------------------------- items


def read_ml100k_items(path: Path, genres: tuple[str, ...]) -> RawItems:
    """u.item: id|title|release date|video date|url|one 0/1 flag per genre."""
    encoding = encoding_of(path, "latin-1")
    first = first_line(path, encoding)
    if first is None:
        return RawItems.empty()
    n_fields = len(first[1].split("|"))
    if n_fields != 5 + len(genres):
        raise DataError(
            f"{path}:{first[0]}: {n_fields - 5} genre flag columns, but there are "
            f"{len(genres)} genres (u.genre)"
        )
    source = DelimitedFile(
        path,
        Layout(delimiter="|", n_fields=n_fields, encoding=encoding),
        ("item", "title", "date", *[""] * n_fields)[:n_fields],
        min_fields=5 + len(genres),
    )
    flag_columns = range(5, 5 + len(genres))

    def fast() -> RawItems:
        if n_fields < source.min_fields:
            raise MalformedError("too few fields")
        table = read_columns(path, source.layout, dict.fromkeys((0, 1, 2, *flag_columns), TEXT))
        flags = [table.column(f"f{j}") for j in flag_columns]
        if not all(pc.all(pc.is_in(flag, pa.array(["0", "1"]))).as_py() for flag in flags):
            raise MalformedError("genre flags must be 0 or 1")
        on = np.stack([pc.equal(f, "1").to_numpy(zero_copy_only=False) for f in flags], axis=1)
        by_date, by_title = _years(table.column("f2"), dates=True), _years(table.column("f1"))
        return _items(
            table.column("f0"),
            table.column("f1").to_pylist(),
            [[genres[j] for j in np.flatnonzero(row)] for row in on],
            np.where(np.isfinite(by_date) & (by_date != 0), by_date, by_title),
        )

    def problem(fields: list[str]) -> str | None:
        if not fields[0].strip():
            return "empty item id"
        if any(fields[j] not in ("0", "1") for j in flag_columns):
            return "genre flags must be 0 or 1"
        return None

    return _read(source, fast, problem)


def read_ml1m_items(path: Path) -> RawItems:
    """movies.dat: id::title::genre|genre..."""
    encoding = encoding_of(path, "latin-1")
    first = first_line(path, encoding)
    if first is None:
        return RawItems.empty()
    n_fields = len(first[1].split("::"))
    roles = ("item", "title", "genres", *[""] * n_fields)[:n_fields]
    layout = Layout(delimiter="::", n_fields=n_fields, encoding=encoding)
    source = DelimitedFile(path, layout, roles, min_fields=3)
    return _read_titled_items(source)


def read_csv_items(path: Path) -> RawItems:
    """movies.csv: a header naming movieId, title and genres, then quoted CSV rows."""
    line, header = csv_header(path)
    roles = _roles(path, line, header, ITEM_COLUMNS, ITEMS_HEADER_HELP)
    for role in ("item", "title", "genres"):
        if role not in roles:
            raise DataError(f"{path}:{line}: the header has no {role} column; {ITEMS_HEADER_HELP}")
    layout = Layout(
        delimiter=",", n_fields=len(header), encoding="utf-8", quoted=True, header_line=line
    )
    return _read_titled_items(DelimitedFile(path, layout, roles, header=tuple(header)))


def _read_titled_items(source: DelimitedFile) -> RawItems:
    positions = [source.position(role) for role in ("item", "title", "genres")]

    def fast() -> RawItems:
        if len(source.roles) < source.min_fields:
            raise MalformedError("too few fields")
        table = read_columns(source.path, source.layout, dict.fromkeys(positions, TEXT))
        ids, titles, genre_text = (table.column(f"f{j}") for j in positions)
        split = pc.split_pattern(genre_text, "|").to_pylist()
        return _items(
            ids,
            titles.to_pylist(),
            # ' Comedy' is 'Comedy': a space after a '|' is layout, not another genre.
            [[g for g in map(str.strip, names) if g and g != NO_GENRES] for names in split],
            _years(titles),
        )

    def problem(fields: list[str]) -> str | None:
        return None if fields[positions[0]].strip() else "empty item id"

    return _read(source, fast, problem)


def _items(
    id_column: pa.ChunkedArray, titles: list[str], genres: list[list[str]], years: np.ndarray
) -> RawItems:
    ids = np.array([text.strip() for text in id_column.to_pylist()], dtype=str)
    if np.any(ids == ""):
        raise MalformedError("empty item id")
    # Last line wins for a repeated id: the first occurrence in the reversed order.
    _, first_reversed = np.unique(ids[::-1], return_index=True)
    keep = np.sort(len(ids) - 1 - first_reversed)
    return RawItems(
        ids=ids[keep],
        titles=[titles[k] for k in keep],
        genres=[genres[k] for k in keep],
        years=years[keep],
    )


def _years(texts: pa.ChunkedArray, *, dates: bool = False) -> np.ndarray:
    """The year a title ends with, '... (1995)', or with `dates` the year a date ends with,
    '01-Jan-1995'; NaN otherwise. Bare digits end a date only: titles such as 'Blade
    Runner 2049' or '1984' name no release year."""
    trimmed = pc.utf8_trim_whitespace(texts)
    if dates:
        tail = pc.utf8_slice_codeunits(trimmed, start=-4)
        found = pc.if_else(
            pc.match_substring_regex(tail, r"^[0-9]{4}$"), tail, pa.scalar(None, TEXT)
        )
    else:
        found = pc.struct_field(pc.extract_regex(trimmed, r"\((?P<year>[0-9]{4})\)$"), [0])
    return np.asarray(pc.cast(found, FLOAT).to_numpy(zero_copy_only=False), dtype=np.float64)
