"""training/movielens.py: the columnar readers against the former row-by-row reader.

`_row_*` below are copies of the row-by-row readers the columnar ones replaced, kept only
here as the reference: on generated files, well-formed or with one malformed line, both
must give the same ratings, the same items, or an error on the same line.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.datagen import write_ml1m, write_ml100k, write_ml_latest
from training.data import DataError, load_dataset
from training.movielens import (
    RawRatings,
    csv_ratings,
    read_csv_items,
    read_ml1m_items,
    read_ratings,
    separated_ratings,
)

RowRating = tuple[str, str, float, int]

# ---------------------------------------------------------------- the reference reader


def _row_lines(path: Path) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1):
        line = raw.decode("latin-1").rstrip("\r\n")
        if line.strip():
            out.append((number, line))
    return out


def _row_number(path: Path, number: int, text: str, what: str, integer: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise DataError(f"{path}:{number}: {what} {text!r} is not {kind}") from None
    return value


def _row_record(path: Path, number: int, parts: list[str]) -> RowRating:
    for j, what in ((0, "user"), (1, "item")):
        if not parts[j].strip():
            raise DataError(f"{path}:{number}: empty {what} id")
    rating = _row_number(path, number, parts[2], "rating")
    if not 0.0 < rating <= 5.0:
        raise DataError(f"{path}:{number}: rating {rating} outside (0, 5]")
    stamp = 0
    if len(parts) > 3 and parts[3].strip():
        stamp = int(_row_number(path, number, parts[3], "timestamp", integer=True))
    return parts[0].strip(), parts[1].strip(), rating, stamp


def _row_sep_ratings(path: Path, sep: str) -> list[RowRating]:
    rows = []
    for number, line in _row_lines(path):
        parts = line.split(sep)
        if len(parts) < 3:
            raise DataError(
                f"{path}:{number}: expected 3 fields separated by {sep!r}, "
                f"found {len(parts)} (truncated or wrong format?)"
            )
        rows.append(_row_record(path, number, parts))
    return rows


def _row_csv_ratings(path: Path) -> list[RowRating]:
    """The former reader for user,item,rating[,timestamp] in that order, header skipped."""
    rows = []
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for row in reader:
            if reader.line_num == 1 or not row:
                continue
            if len(row) < 3:
                raise DataError(f"{path}:{reader.line_num}: expected user,item,rating")
            rows.append(_row_record(path, reader.line_num, row))
    return rows


def _columnar(raw: RawRatings) -> list[RowRating]:
    return list(
        zip(
            raw.user_values[raw.user_codes].tolist(),
            raw.item_values[raw.item_codes].tolist(),
            raw.rating.tolist(),
            raw.timestamp.tolist(),
            strict=True,
        )
    )


def _as_float32(rows: list[RowRating]) -> list[RowRating]:
    return [(u, i, float(np.float32(r)), t) for u, i, r, t in rows]


def _row_year(text: str) -> float | None:
    match = re.search(r"\((\d{4})\)\s*$", text.strip())
    if match:
        return float(match.group(1))
    tail = text.strip()[-4:]
    return float(tail) if tail.isdigit() else None


# ---------------------------------------------------------------- same results


FORMATS = {
    "ml-100k": ("u.data", lambda root: write_ml100k(root, n_ratings=3000, seed=4)),
    "ml-1m": (
        "ratings.dat",
        lambda root: write_ml1m(root, n_users=80, n_items=100, n_ratings=2500, seed=5),
    ),
    "ml-latest": (
        "ratings.csv",
        lambda root: write_ml_latest(root, n_users=80, n_items=100, n_ratings=2500, seed=6),
    ),
}


def _read_columnar(fmt: str, path: Path) -> list[RowRating]:
    if fmt == "ml-latest":
        return _columnar(read_ratings(csv_ratings(path)))
    return _columnar(read_ratings(separated_ratings(path, "\t" if fmt == "ml-100k" else "::")))


def _read_rows(fmt: str, path: Path) -> list[RowRating]:
    if fmt == "ml-latest":
        return _row_csv_ratings(path)
    return _row_sep_ratings(path, "\t" if fmt == "ml-100k" else "::")


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_ratings_equal_the_row_readers(fmt: str, tmp_path: Path) -> None:
    name, write = FORMATS[fmt]
    path = write(tmp_path / fmt) / name
    reference, columnar = _read_rows(fmt, path), _read_columnar(fmt, path)
    assert len(columnar) == len(reference) > 2000
    assert columnar == _as_float32(reference)


MALFORMED = [
    # (line replacing line 5, the error's text after "file:5: ")
    ("1\t2\tfive\t881250949", "rating 'five' is not a number"),
    ("1\t2\t\t881250949", "rating '' is not a number"),
    ("1\t2\t7\t881250949", "rating 7.0 outside (0, 5]"),
    ("1\t2\t0\t881250949", "rating 0.0 outside (0, 5]"),
    ("1\t2\tnan\t881250949", "rating nan outside (0, 5]"),
    ("1\t2\t4_0\t881250949", None),  # Python's float() takes '4_0'; both readers now refuse it
    ("1\t2\t4\tsoon", "timestamp 'soon' is not an integer"),
    ("\t2\t4\t881250949", "empty user id"),
    ("1\t \t4\t881250949", "empty item id"),
    ("12\t", r"expected 3 fields separated by '\t', found 2 (truncated or wrong format?)"),
    ("12", r"expected 3 fields separated by '\t', found 1 (truncated or wrong format?)"),
]


@pytest.mark.parametrize(("fmt", "case"), [(f, c) for f in FORMATS for c in MALFORMED])
def test_malformed_line_is_named_like_the_row_reader(
    fmt: str, case: tuple[str, str | None], tmp_path: Path
) -> None:
    name, write = FORMATS[fmt]
    path = write(tmp_path / fmt) / name
    line, message = case
    sep = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": ","}[fmt]
    lines = path.read_text().splitlines()
    lines[4] = line.replace("\t", sep)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as columnar:
        _read_columnar(fmt, path)
    text = str(columnar.value)
    if message is None:  # the row reader took it; the columnar one follows pyarrow's syntax
        assert text == f"{path}:5: rating '4_0' is not a number"
    elif "fields" in message and fmt == "ml-latest":
        found = len(line.split("\t"))
        assert (
            text == f"{path}:5: expected userId,movieId,rating,timestamp (4 fields), found {found}"
        )
    elif fmt == "ml-latest":
        assert text == f"{path}:5: {message}"
    else:
        with pytest.raises(DataError) as reference:
            _row_sep_ratings(path, sep)
        assert text == str(reference.value)
        assert text == f"{path}:5: {message.replace(repr(chr(9)), repr(sep))}"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("user", ["1\x0b2", "7\x00", "x\x1by"])
def test_an_id_with_a_control_character_is_refused_with_its_line(
    fmt: str, user: str, tmp_path: Path
) -> None:
    # The service refuses such ids (contract/ids.py); a bundle trained on one could never
    # be asked for it, and the event export's u.data would split it.
    name, write = FORMATS[fmt]
    path = write(tmp_path / fmt) / name
    sep = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": ","}[fmt]
    lines = path.read_text().splitlines()
    lines[4] = sep.join([user, "2", "4", "881250949"])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r":5: user id .* holds a control character"):
        _read_columnar(fmt, path)


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_id_the_service_could_not_be_asked_for_is_refused(fmt: str, tmp_path: Path) -> None:
    name, write = FORMATS[fmt]
    path = write(tmp_path / fmt) / name
    sep = {"ml-100k": "\t", "ml-1m": "::", "ml-latest": ","}[fmt]
    lines = path.read_text().splitlines()
    lines[4] = sep.join(["1", "L" * 129, "4", "881250949"])
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r":5: item id 'L+'\.\.\. is 129 characters long"):
        _read_columnar(fmt, path)


def test_a_quoted_line_end_in_a_csv_id_is_refused(tmp_path: Path) -> None:
    path = write_ml_latest(tmp_path / "ml-latest") / "ratings.csv"
    lines = path.read_text().splitlines()
    lines[4] = '"99\n98",2,4,881250949'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"user id '99\\n98' holds a control character \(\\n\)"):
        _read_columnar("ml-latest", path)


def test_blank_lines_keep_line_numbers_and_a_late_error_is_found(tmp_path: Path) -> None:
    path = write_ml1m(tmp_path / "ml-1m", n_ratings=800) / "ratings.dat"
    lines = path.read_text().splitlines()
    lines[10:10] = ["", "", ""]
    lines[-1] = "1::2::3::sometime"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as reference:
        _row_sep_ratings(path, "::")
    with pytest.raises(DataError) as columnar:
        read_ratings(separated_ratings(path, "::"))
    assert str(columnar.value) == str(reference.value)
    assert f"ratings.dat:{len(lines)}: timestamp 'sometime'" in str(columnar.value)


@pytest.mark.parametrize("line", ["1:::6::3::881250949", ":1::6::3::881250949"])
def test_a_stray_colon_beside_a_double_colon_is_refused(tmp_path: Path, line: str) -> None:
    # '1:::6' splits into '1' and ':6': no id of an ml-1m file starts or ends with ':'.
    path = write_ml1m(tmp_path / "ml-1m", n_ratings=800) / "ratings.dat"
    lines = path.read_text().splitlines()
    lines[5] = line
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"ratings\.dat:6: (user|item) id .* next to a stray ':'"):
        read_ratings(separated_ratings(path, "::"))


def test_stricter_than_the_row_reader_where_a_line_differs_from_line_one(
    tmp_path: Path,
) -> None:
    """A line without the timestamp the others have, or of spaces, is refused (the row
    reader took the first as timestamp 0 and skipped the second)."""
    path = tmp_path / "u.data"
    path.write_text("1\t2\t3\t100\n1\t3\t4\n")
    with pytest.raises(
        DataError, match=r"u\.data:2: expected 4 fields separated by '\\t' like the first line"
    ):
        read_ratings(separated_ratings(path, "\t"))
    path.write_text("1\t2\t3\t100\n   \n1\t3\t4\t100\n")
    with pytest.raises(DataError, match=r"u\.data:2: expected 3 fields .* found 1"):
        read_ratings(separated_ratings(path, "\t"))
    # Three fields on every line is a file without timestamps: all 0.
    path.write_text("1\t2\t3\n1\t3\t4\n")
    assert read_ratings(separated_ratings(path, "\t")).timestamp.tolist() == [0, 0]


def test_empty_files_have_no_ratings(tmp_path: Path) -> None:
    for name, text in (("u.data", ""), ("blank.data", "\n\n")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match="no ratings"):
            read_ratings(separated_ratings(tmp_path / name, "\t"))
    (tmp_path / "r.csv").write_text("userId,movieId,rating\n")
    with pytest.raises(DataError, match=r"r\.csv: no ratings"):
        read_ratings(csv_ratings(tmp_path / "r.csv"))


def test_bad_utf8_in_a_csv_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_bytes(b"user,item,rating\nalice,m1,4\nb\xffb,m1,3\n")
    with pytest.raises(DataError, match=r"ratings\.csv:3: cannot decode as utf-8"):
        read_ratings(csv_ratings(path))
    # Far into a file, where the text is decoded chunks ahead of the row being read.
    rows = [b"%d,m%d,4\n" % (n, n) for n in range(5000)]
    rows[3000] = b"\xe9,m1,4\n"
    path.write_bytes(b"user,item,rating\n" + b"".join(rows))
    with pytest.raises(DataError, match=r"ratings\.csv:3002: cannot decode as utf-8"):
        read_ratings(csv_ratings(path))
    items = tmp_path / "movies.csv"
    items.write_bytes(b"movieId,title,genres\n1,A,Drama\n2,Caf\xe9,Drama\n")
    with pytest.raises(DataError, match=r"movies\.csv:3: cannot decode as utf-8"):
        read_csv_items(items)
    path.write_bytes(gzip.compress(b"user,item,rating\nalice,m1,4\n"))
    with pytest.raises(DataError, match=r"ratings\.csv: gzip-compressed; decompress it first"):
        read_ratings(csv_ratings(path))


def test_ids_are_stripped_and_empty_timestamps_are_zero(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating,timestamp\n 7 ,m1,4,\n7,m1 ,3.5,12.9\n8,m2,5,\n")
    raw = read_ratings(csv_ratings(path))
    assert _columnar(raw) == [("7", "m1", 4.0, 0), ("7", "m1", 3.5, 12), ("8", "m2", 5.0, 0)]


# ---------------------------------------------------------------- header names


def _write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.mark.parametrize(
    "header",
    [
        ["movieId", "userId", "rating", "timestamp"],
        ["timestamp", "rating", "movieId", "userId"],
        ["USER_ID", "Item_Id", "Rating", "TimeStamp"],
        ["item", "user", "rating"],
    ],
)
def test_columns_are_chosen_by_header_names(header: list[str], tmp_path: Path) -> None:
    root = write_ml_latest(tmp_path / "ml-latest", n_ratings=600, seed=2)
    reference = _row_csv_ratings(root / "ratings.csv")
    role = {"movieid": 1, "item_id": 1, "item": 1, "userid": 0, "user_id": 0, "user": 0}
    role |= {"rating": 2, "timestamp": 3}
    positions = [role[name.lower()] for name in header]
    rows = [[str(row[j]) for j in positions] for row in reference]
    permuted = _write_csv(tmp_path / "permuted.csv", header, rows)
    expected = reference if len(header) == 4 else [(u, i, r, 0) for u, i, r, _ in reference]
    assert _columnar(read_ratings(csv_ratings(permuted))) == _as_float32(expected)


def test_item_column_first_does_not_swap_users_and_items(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("movieId,userId,rating\nm1,alice,4\nm2,alice,3\nm1,bob,5\n")
    ds = load_dataset(path, dataset="csv")
    assert ds.user_ids == ["alice", "bob"] and ds.item_ids == ["m1", "m2"]
    assert ds.ratings.user.tolist() == [1, 1, 2] and ds.ratings.item.tolist() == [1, 2, 1]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("uid,movieId,rating", r":1: unknown column 'uid' in the header; a ratings CSV starts"),
        ("1,2,4.5", r":1: unknown column '1' in the header"),  # no header at all
        ("userId,movieId,timestamp", r":1: the header has no rating column"),
        ("userId,rating", r":1: the header has no item column"),
        ("userId,user,movieId,rating", r":1: columns 'userId' and 'user' both name the user"),
        ("", r"empty file"),
    ],
)
def test_header_errors(header: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(f"{header}\n1,2,4\n" if header else "")
    with pytest.raises(DataError, match=message) as error:
        load_dataset(path, dataset="csv")
    assert "\n" not in str(error.value)
    assert str(error.value).startswith(str(path))


# ---------------------------------------------------------------- items


def test_ml100k_items_match_the_row_reader(synthetic_ml100k: Path) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    year_field = ds.feature_map.item_fields[0]
    genres = ds.feature_map.genres
    for number, line in _row_lines(synthetic_ml100k / "u.item"):
        parts = line.split("|")
        row = ds.item_index[parts[0]]
        meta = ds.items_meta[row - 1]
        flags = parts[5 : 5 + len(genres)]
        assert meta["title"] == parts[1], number
        assert meta["genres"] == [g for g, f in zip(genres, flags, strict=True) if f == "1"]
        year = _row_year(parts[2]) or _row_year(parts[1])
        assert ds.tables.item_feats[row, 0] == year_field.encode(year)


def test_ml1m_and_ml_latest_items_match_the_row_reader(tmp_path: Path) -> None:
    ml1m = write_ml1m(tmp_path / "ml-1m") / "movies.dat"
    items = read_ml1m_items(ml1m)
    expected = [line.split("::") for _, line in _row_lines(ml1m)]
    assert items.ids.tolist() == [mid for mid, _, _ in expected]
    assert items.titles == [title for _, title, _ in expected]
    assert items.genres == [[g for g in text.split("|") if g] for _, _, text in expected]
    assert items.years.tolist() == [_row_year(title) for _, title, _ in expected]

    latest = write_ml_latest(tmp_path / "latest") / "movies.csv"
    with latest.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    items = read_csv_items(latest)
    assert items.titles == [title for _, title, _ in rows]  # quoted commas kept
    assert items.genres == [text.split("|") for _, _, text in rows]


def test_items_csv_extras(tmp_path: Path) -> None:
    path = tmp_path / "movies.csv"
    path.write_text(
        'genres,movieId,Title\n(no genres listed),1,"A, The (1999)"\n'
        'Drama|Comedy,2,B\nAction,1,"A (2001)"\n'
    )
    items = read_csv_items(path)  # columns by name; the repeated id 1 keeps its last line
    assert items.ids.tolist() == ["2", "1"]
    assert items.titles == ["B", "A (2001)"] and items.genres == [["Drama", "Comedy"], ["Action"]]
    assert np.isnan(items.years[0]) and items.years[1] == 2001.0
    # Only '(yyyy)' ends a title with its year: these titles name none.
    path.write_text("movieId,title,genres\n1,Blade Runner 2049,Drama\n2, 1984 ,Drama\n")
    assert np.isnan(read_csv_items(path).years).all()
    # A space after a '|' is layout: ' Comedy' is the genre 'Comedy'.
    path.write_text("movieId,title,genres\n1,A,Drama| Comedy\n2,B,Comedy\n")
    assert read_csv_items(path).genres == [["Drama", "Comedy"], ["Comedy"]]
    path.write_text("movieId,title\n1,A\n")
    with pytest.raises(DataError, match=r"movies\.csv:1: the header has no genres column"):
        read_csv_items(path)


def test_truncated_movies_dat_line(tmp_path: Path) -> None:
    root = write_ml1m(tmp_path / "ml-1m")
    lines = (root / "movies.dat").read_text(encoding="latin-1").splitlines()
    lines[3] = "4::Film 4 (1990)"
    (root / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"movies\.dat:4: expected 3 fields separated by '::'"):
        load_dataset(root, dataset="ml-1m")


def test_latin1_titles_survive(tmp_path: Path) -> None:
    root = write_ml1m(tmp_path / "ml-1m")
    lines = (root / "movies.dat").read_text(encoding="latin-1").splitlines()
    lines[0] = "1::Am\xe9lie: Le Fabuleux (2001)::Comedy|Romance"
    (root / "movies.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    ds = load_dataset(root, dataset="ml-1m")
    assert ds.items_meta[0]["title"] == "Am\xe9lie: Le Fabuleux (2001)"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MOVIELENS_DIR"), reason="MOVIELENS_DIR is not set")
def test_real_ml100k_equals_the_row_reader() -> None:
    real = Path(os.environ["MOVIELENS_DIR"])
    reference = _row_sep_ratings(real / "u.data", "\t")
    assert _columnar(read_ratings(separated_ratings(real / "u.data", "\t"))) == _as_float32(
        reference
    )


def test_copy_of_fixture_is_not_modified(synthetic_ml100k: Path, tmp_path: Path) -> None:
    # The readers never write next to the data (no caches, no converted copies).
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_ml100k, copy)
    before = sorted(p.name for p in copy.iterdir())
    load_dataset(copy, dataset="ml-100k")
    assert sorted(p.name for p in copy.iterdir()) == before
