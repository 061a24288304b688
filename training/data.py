"""MovieLens-style rating data: loaders, id maps, side features and splits.

Every parse error names the file and the line, so a truncated download or a hand-edited
file is diagnosed without a debugger.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.layout import sha256_file
from training.features import NONE_FIELD, FeatureMap, FeatureTables, FieldSpec

log = logging.getLogger(__name__)

DATASETS = ("ml-100k", "ml-1m", "ml-latest", "ml-latest-small", "csv")
SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", "random", "temporal", "none")
CANONICAL_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")

GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
# md5 of the official archives as GroupLens publishes them beside each zip.
ARCHIVE_MD5 = {
    "ml-100k": "0e33842e24a9c977be4e0107933c0723",
    "ml-1m": "c4d9eecfca2ab87c1945afe126590906",
}

AGE_EDGES = (18.0, 25.0, 35.0, 45.0, 50.0, 56.0)
YEAR_EDGES = (1940.0, 1960.0, 1970.0, 1980.0, 1990.0, 1994.0, 1996.0, 1998.0, 2005.0, 2015.0)
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")


class DataError(ValueError):
    """A data file is missing, truncated or malformed; the message names file and line."""


@dataclass
class Ratings:
    """Ratings as parallel arrays of indices (1-based; 0 is the unknown id)."""

    user: np.ndarray  # int64 [N]
    item: np.ndarray  # int64 [N]
    rating: np.ndarray  # float32 [N]
    timestamp: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def subset(self, index: np.ndarray) -> Ratings:
        return Ratings(
            user=self.user[index],
            item=self.item[index],
            rating=self.rating[index],
            timestamp=self.timestamp[index],
        )

    @classmethod
    def empty(cls) -> Ratings:
        return cls(
            user=np.zeros(0, np.int64),
            item=np.zeros(0, np.int64),
            rating=np.zeros(0, np.float32),
            timestamp=np.zeros(0, np.int64),
        )


@dataclass
class Dataset:
    name: str
    feature_map: FeatureMap
    tables: FeatureTables
    user_ids: list[str]  # raw id of user index p + 1
    item_ids: list[str]
    items_meta: list[dict[str, Any]]  # {"item_id", "title", "genres"} in index order
    ratings: Ratings
    fingerprint: str
    source_dir: Path
    user_index: dict[str, int] = field(default_factory=dict)
    item_index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.user_index = {u: i + 1 for i, u in enumerate(self.user_ids)}
        self.item_index = {m: i + 1 for i, m in enumerate(self.item_ids)}


@dataclass
class Split:
    name: str
    train: Ratings
    test: Ratings


# ---------------------------------------------------------------- reading files


def _require(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return path


def _lines(path: Path, *, encoding: str = "latin-1") -> Iterator[tuple[int, str]]:
    """Non-empty lines with 1-based numbers; decoding errors are reported by line."""
    _require(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}:{number}: cannot decode as {encoding}: {err}") from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def _fields(path: Path, number: int, line: str, sep: str, count: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) < count:
        raise DataError(
            f"{path}:{number}: expected {count} fields separated by {sep!r}, "
            f"found {len(parts)} (truncated or wrong format?)"
        )
    return parts


def _rating(path: Path, number: int, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}:{number}: rating {text!r} is not a number") from None
    if not 0.0 < value <= 5.0:
        raise DataError(f"{path}:{number}: rating {value} outside (0, 5]")
    return value


def _timestamp(path: Path, number: int, text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        raise DataError(f"{path}:{number}: timestamp {text!r} is not an integer") from None


def _raw_id(path: Path, number: int, text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise DataError(f"{path}:{number}: empty {what} id")
    return text


RawRating = tuple[str, str, float, int]


def _read_sep_ratings(path: Path, sep: str) -> list[RawRating]:
    rows: list[RawRating] = []
    for number, line in _lines(path):
        parts = _fields(path, number, line, sep, 3)
        ts = _timestamp(path, number, parts[3]) if len(parts) > 3 and parts[3].strip() else 0
        rows.append(
            (
                _raw_id(path, number, parts[0], "user"),
                _raw_id(path, number, parts[1], "item"),
                _rating(path, number, parts[2]),
                ts,
            )
        )
    if not rows:
        raise DataError(f"{path}: no ratings")
    return rows


def _csv_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    _require(path)
    with path.open(encoding="utf-8", newline="", errors="strict") as handle:
        reader = csv.reader(handle)
        try:
            for row in reader:
                if row and any(cell.strip() for cell in row):
                    yield reader.line_num, row
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(f"{path}:{reader.line_num}: {err}") from None


def _read_csv_ratings(path: Path) -> list[RawRating]:
    rows: list[RawRating] = []
    for number, row in _csv_rows(path):
        if number == 1 and row and not _is_number(row[2] if len(row) > 2 else ""):
            continue  # header
        if len(row) < 3:
            raise DataError(f"{path}:{number}: expected user,item,rating[,timestamp]")
        ts = _timestamp(path, number, row[3]) if len(row) > 3 and row[3].strip() else 0
        rows.append(
            (
                _raw_id(path, number, row[0], "user"),
                _raw_id(path, number, row[1], "item"),
                _rating(path, number, row[2]),
                ts,
            )
        )
    if not rows:
        raise DataError(f"{path}: no ratings")
    return rows


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _year_from(text: str) -> float | None:
    match = _YEAR_IN_TITLE.search(text.strip())
    if match:
        return float(match.group(1))
    tail = text.strip()[-4:]
    return float(tail) if tail.isdigit() else None


@dataclass
class _Raw:
    """What a loader read, before indexing."""

    ratings: list[RawRating]
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw id -> demographics
    items: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw id -> title/genres/year
    genres: tuple[str, ...] = ()
    has_demographics: bool = False
    files: list[Path] = field(default_factory=list)


def _read_users(path: Path, sep: str, columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Demographics by raw user id; `columns` names the file's fields in order."""
    users: dict[str, dict[str, Any]] = {}
    for number, line in _lines(path):
        row = dict(zip(columns, _fields(path, number, line, sep, len(columns)), strict=False))
        if not row["age"].strip().isdigit():
            raise DataError(f"{path}:{number}: age {row['age']!r} is not an integer")
        users[_raw_id(path, number, row.pop("id"), "user")] = {**row, "age": int(row["age"])}
    return users


def _read_ml100k(root: Path) -> _Raw:
    genre_path = root / "u.genre"
    genres: tuple[str, ...] = ML100K_GENRES
    if genre_path.is_file():
        names = []
        for number, line in _lines(genre_path):
            name, _, index = line.partition("|")
            if not index.strip().isdigit():
                raise DataError(f"{genre_path}:{number}: expected 'name|index'")
            names.append(name)
        genres = tuple(names)
    user_path = root / "u.user"
    users = _read_users(user_path, "|", ("id", "age", "gender", "occupation", "zip"))
    items: dict[str, dict[str, Any]] = {}
    item_path = root / "u.item"
    for number, line in _lines(item_path):
        parts = _fields(item_path, number, line, "|", 5 + len(genres))
        flags = parts[5 : 5 + len(genres)]
        if any(flag not in ("0", "1") for flag in flags):
            raise DataError(f"{item_path}:{number}: genre flags must be 0 or 1")
        items[_raw_id(item_path, number, parts[0], "item")] = {
            "title": parts[1],
            "genres": [g for g, flag in zip(genres, flags, strict=True) if flag == "1"],
            "year": _year_from(parts[2]) or _year_from(parts[1]),
        }
    return _Raw(
        ratings=_read_sep_ratings(root / "u.data", "\t"),
        users=users,
        items=items,
        genres=genres,
        has_demographics=True,
        files=[root / "u.data", user_path, item_path],
    )


def _read_ml1m(root: Path) -> _Raw:
    user_path = root / "users.dat"
    users = _read_users(user_path, "::", ("id", "gender", "age", "occupation", "zip"))
    items: dict[str, dict[str, Any]] = {}
    movie_path = root / "movies.dat"
    for number, line in _lines(movie_path):
        mid, title, genre_text = _fields(movie_path, number, line, "::", 3)[:3]
        items[_raw_id(movie_path, number, mid, "item")] = {
            "title": title,
            "genres": [g for g in genre_text.split("|") if g],
            "year": _year_from(title),
        }
    genres = tuple(sorted({g for meta in items.values() for g in meta["genres"]}))
    return _Raw(
        ratings=_read_sep_ratings(root / "ratings.dat", "::"),
        users=users,
        items=items,
        genres=genres,
        has_demographics=True,
        files=[root / "ratings.dat", user_path, movie_path],
    )


def _read_ml_latest(root: Path) -> _Raw:
    items: dict[str, dict[str, Any]] = {}
    movie_path = root / "movies.csv"
    for number, row in _csv_rows(movie_path):
        if number == 1 and row[0] == "movieId":
            continue
        if len(row) < 3:
            raise DataError(f"{movie_path}:{number}: expected movieId,title,genres")
        genres = [g for g in row[2].split("|") if g and g != "(no genres listed)"]
        items[_raw_id(movie_path, number, row[0], "item")] = {
            "title": row[1],
            "genres": genres,
            "year": _year_from(row[1]),
        }
    genre_names = tuple(sorted({g for meta in items.values() for g in meta["genres"]}))
    return _Raw(
        ratings=_read_csv_ratings(root / "ratings.csv"),
        items=items,
        genres=genre_names,
        files=[root / "ratings.csv", movie_path],
    )


def _read_generic_csv(path: Path) -> _Raw:
    ratings_path = path if path.is_file() else path / "ratings.csv"
    return _Raw(ratings=_read_csv_ratings(ratings_path), files=[ratings_path])


# ---------------------------------------------------------------- indexing


def _sorted_ids(ids: set[str]) -> list[str]:
    if all(i.isdigit() for i in ids):
        return sorted(ids, key=int)
    return sorted(ids)


def _categorical(name: str, values: Sequence[str]) -> FieldSpec:
    return FieldSpec(name=name, kind="categorical", values=tuple(sorted(set(values))))


def _build(name: str, raw: _Raw, source_dir: Path) -> Dataset:
    user_ids = _sorted_ids(set(raw.users) | {r[0] for r in raw.ratings})
    item_ids = _sorted_ids(set(raw.items) | {r[1] for r in raw.ratings})
    user_index = {u: i + 1 for i, u in enumerate(user_ids)}
    item_index = {m: i + 1 for i, m in enumerate(item_ids)}

    if raw.has_demographics:
        demo = list(raw.users.values())
        user_fields: tuple[FieldSpec, ...] = (
            FieldSpec(name="age", kind="bucket", edges=AGE_EDGES),
            _categorical("gender", [d["gender"] for d in demo]),
            _categorical("occupation", [d["occupation"] for d in demo]),
            FieldSpec(
                name="zip",
                kind="prefix",
                length=1,
                values=tuple(sorted({str(d["zip"])[:1] for d in demo if d["zip"]})),
            ),
        )
    else:
        user_fields = (NONE_FIELD,)
    has_years = any(meta.get("year") for meta in raw.items.values())
    item_fields = (
        (FieldSpec(name="year", kind="bucket", edges=YEAR_EDGES),) if has_years else (NONE_FIELD,)
    )
    genres = raw.genres or ("(none)",)
    feature_map = FeatureMap(
        n_users=len(user_ids),
        n_items=len(item_ids),
        user_fields=user_fields,
        item_fields=item_fields,
        genres=genres,
    )

    user_feats = np.zeros((len(user_ids) + 1, len(user_fields)), np.int64)
    for uid, demo_row in raw.users.items():
        for j, spec in enumerate(user_fields):
            user_feats[user_index[uid], j] = spec.encode(demo_row.get(spec.name))
    item_feats = np.zeros((len(item_ids) + 1, len(item_fields)), np.int64)
    item_genres = np.zeros((len(item_ids) + 1, len(genres)), np.float32)
    genre_pos = {g: j for j, g in enumerate(genres)}
    items_meta: list[dict[str, Any]] = []
    for mid in item_ids:
        meta = raw.items.get(mid, {})
        row = item_index[mid]
        for j, spec in enumerate(item_fields):
            item_feats[row, j] = spec.encode(meta.get(spec.name))
        for g in meta.get("genres", ()):
            item_genres[row, genre_pos[g]] = 1.0
        items_meta.append(
            {"item_id": mid, "title": meta.get("title", mid), "genres": meta.get("genres", [])}
        )

    ratings = _index_ratings(raw.ratings, user_index, item_index, source=str(raw.files[0]))
    return Dataset(
        name=name,
        feature_map=feature_map,
        tables=FeatureTables(user_feats=user_feats, item_feats=item_feats, item_genres=item_genres),
        user_ids=user_ids,
        item_ids=item_ids,
        items_meta=items_meta,
        ratings=ratings,
        fingerprint=fingerprint(raw.files),
        source_dir=source_dir,
    )


def _index_ratings(
    rows: Sequence[RawRating],
    user_index: dict[str, int],
    item_index: dict[str, int],
    *,
    source: str,
) -> Ratings:
    try:
        users = np.fromiter((user_index[r[0]] for r in rows), np.int64, len(rows))
        items = np.fromiter((item_index[r[1]] for r in rows), np.int64, len(rows))
    except KeyError as err:
        raise DataError(f"{source}: id {err.args[0]!r} is not in the data set's id maps") from None
    return Ratings(
        user=users,
        item=items,
        rating=np.fromiter((r[2] for r in rows), np.float32, len(rows)),
        timestamp=np.fromiter((r[3] for r in rows), np.int64, len(rows)),
    )


def fingerprint(files: Sequence[Path]) -> str:
    """sha256 over the names and contents of the input files, independent of their folder."""
    outer = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        outer.update(path.name.encode())
        outer.update(sha256_file(path).encode())
    return outer.hexdigest()


# ---------------------------------------------------------------- download


def default_cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE_DIR", Path.home() / ".cache" / "recsys-distill"))


def download_archive(
    dataset: str,
    *,
    cache_dir: Path | None = None,
    base_url: str | None = None,
    md5: str | None = None,
) -> Path:
    """Downloads and unpacks the official GroupLens archive once; returns its folder.

    The archive's md5 is checked against GroupLens' published value (or the `.md5` file
    beside it for archives not in ARCHIVE_MD5) before anything is unpacked.
    """
    cache = cache_dir or default_cache_dir()
    target = cache / dataset
    if (target / ".complete").is_file():
        return target
    base = (base_url or os.environ.get("MOVIELENS_BASE_URL") or GROUPLENS_BASE_URL).rstrip("/")
    url = f"{base}/{dataset}.zip"
    cache.mkdir(parents=True, exist_ok=True)
    expected = md5 or ARCHIVE_MD5.get(dataset) or _fetch_text(f"{url}.md5").split()[0]
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = Path(tmp) / f"{dataset}.zip"
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as err:
            raise DataError(f"{url}: download failed: {err}") from None
        actual = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
        if actual != expected:
            raise DataError(f"{url}: md5 {actual} does not match the published {expected}")
        try:
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise DataError(f"{url}: not a valid zip archive: {err}") from None
        unpacked = Path(tmp) / dataset
        if not unpacked.is_dir():
            raise DataError(f"{url}: archive has no top-level folder {dataset}/")
        (unpacked / ".complete").write_text(expected + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpacked, target)
    return target


def _fetch_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return str(response.read().decode("ascii"))
    except OSError as err:
        raise DataError(f"{url}: download failed: {err}") from None


# ---------------------------------------------------------------- public entry points


def load_dataset(
    data_dir: Path | None,
    *,
    dataset: str = "ml-100k",
    cache_dir: Path | None = None,
) -> Dataset:
    """Reads a local folder, or downloads the official archive when `data_dir` is None."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is None:
        if dataset == "csv":
            raise DataError("the csv dataset needs --data-dir (a ratings CSV or its folder)")
        data_dir = download_archive(dataset, cache_dir=cache_dir)
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise DataError(f"{data_dir}: no such file or directory")
    if dataset == "ml-100k":
        raw = _read_ml100k(data_dir)
    elif dataset == "ml-1m":
        raw = _read_ml1m(data_dir)
    elif dataset in ("ml-latest", "ml-latest-small"):
        raw = _read_ml_latest(data_dir)
    else:
        raw = _read_generic_csv(data_dir)
    loaded = _build(dataset, raw, data_dir)
    log.info(
        "loaded %s: %d users, %d items, %d ratings",
        dataset,
        loaded.feature_map.n_users,
        loaded.feature_map.n_items,
        len(loaded.ratings),
    )
    return loaded


def make_split(
    dataset: Dataset,
    *,
    split: str,
    data_dir: Path | None = None,
    seed: int = 0,
    test_ratio: float = 0.2,
) -> Split:
    """Train/test split by name: a canonical ml-100k fold, random, temporal or none."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    ratings = dataset.ratings
    if split in CANONICAL_FOLDS:
        folder = Path(data_dir or dataset.source_dir)
        if dataset.name != "ml-100k":
            raise DataError(f"split {split} exists only for ml-100k, not {dataset.name}")
        train_rows = _read_sep_ratings(folder / f"{split}.base", "\t")
        test_rows = _read_sep_ratings(folder / f"{split}.test", "\t")
        return Split(
            name=split,
            train=_index_ratings(
                train_rows, dataset.user_index, dataset.item_index, source=f"{split}.base"
            ),
            test=_index_ratings(
                test_rows, dataset.user_index, dataset.item_index, source=f"{split}.test"
            ),
        )
    if split == "none":
        return Split(name=split, train=ratings, test=Ratings.empty())
    if split == "random":
        if not 0.0 < test_ratio < 1.0:
            raise DataError(f"test_ratio must lie in (0, 1), got {test_ratio}")
        train, test = holdout(ratings, fraction=test_ratio, seed=seed)
        return Split(name=split, train=train, test=test)
    return _temporal(ratings)


def _temporal(ratings: Ratings) -> Split:
    """Per-user leave-last-out: each user's latest rating (ties: the later row) is the test."""
    order = np.lexsort((np.arange(len(ratings)), ratings.timestamp, ratings.user))
    users_sorted = ratings.user[order]
    is_last = np.ones(len(order), bool)
    is_last[:-1] = users_sorted[:-1] != users_sorted[1:]
    counts = np.bincount(ratings.user)
    is_last &= counts[users_sorted] >= 2  # a user with one rating keeps it for training
    test_index = np.sort(order[is_last])
    mask = np.zeros(len(ratings), bool)
    mask[test_index] = True
    return Split(name="temporal", train=ratings.subset(~mask), test=ratings.subset(mask))


def holdout(ratings: Ratings, *, fraction: float = 0.1, seed: int = 0) -> tuple[Ratings, Ratings]:
    """A seeded random (train, held-out) partition of a set of ratings."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ratings))
    n_out = round(len(ratings) * fraction)
    return ratings.subset(np.sort(perm[n_out:])), ratings.subset(np.sort(perm[:n_out]))


def seen_csr(ratings: Ratings, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Items each user rated, as CSR (indptr [n_users+2], indices), users 0..n_users."""
    order = np.lexsort((ratings.item, ratings.user))
    users = ratings.user[order]
    items = ratings.item[order]
    keep = np.ones(len(users), bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items = users[keep], items[keep]
    counts = np.bincount(users, minlength=n_users + 1)
    indptr = np.zeros(n_users + 2, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, items.astype(np.int64)


def popularity(ratings: Ratings, n_items: int) -> np.ndarray:
    """Item indices 1..n_items, most rated first (ties: lower index first)."""
    counts = np.bincount(ratings.item, minlength=n_items + 1)[1:]
    return np.argsort(-counts, kind="stable") + 1
