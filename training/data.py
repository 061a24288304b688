"""MovieLens-style rating data: loaders, id maps, side features and splits.

Rating and item files are read columnar (training.columnar, training.movielens): no Python
object per rating. Every parse error names the file and the line, so a truncated download
or a hand-edited file is diagnosed without a debugger.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from contract.layout import sha256_file
from contract.ratings import RATING_MAX, RATING_MIN, RatingScale
from training.columnar import DataError, decode_line, encoding_of, require, unique_sorted
from training.features import NONE_FIELD, FeatureMap, FeatureTables, FieldSpec
from training.movielens import (
    RawItems,
    RawRatings,
    csv_ratings,
    read_csv_items,
    read_ml1m_items,
    read_ml100k_items,
    read_ratings,
    separated_ratings,
)

__all__ = ["DataError"]  # re-exported: callers catch training.data.DataError

log = logging.getLogger(__name__)

DATASETS = ("ml-100k", "ml-1m", "ml-latest", "ml-latest-small", "csv")
SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub", "random", "temporal", "none")
CANONICAL_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
ML100K_SIDE_FILES = (
    "u.genre",
    *(f"{fold}.{part}" for fold in CANONICAL_FOLDS for part in ("base", "test")),
)
# The command line's default split: a canonical fold where the data set ships one.
AUTO_SPLIT = "auto"

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


def default_split(dataset: str) -> str:
    """`u1` for ml-100k (the only data set with canonical folds), `random` otherwise."""
    return "u1" if dataset == "ml-100k" else "random"


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

    # Built on first use: a dict per id is large for big catalogues and most runs never ask.
    @cached_property
    def user_index(self) -> dict[str, int]:
        return {u: i + 1 for i, u in enumerate(self.user_ids)}

    @cached_property
    def item_index(self) -> dict[str, int]:
        return {m: i + 1 for i, m in enumerate(self.item_ids)}


@dataclass
class Split:
    name: str
    train: Ratings
    test: Ratings


# ---------------------------------------------------------------- small side files
# Demographics and genre lists have thousands of lines at most; a line reader suffices.


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-empty lines with 1-based numbers (Latin-1 unless a byte-order mark says UTF-8);
    decoding errors are reported by line."""
    encoding = encoding_of(path, "latin-1")
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(path, number, raw, encoding)
            if line.strip():
                yield number, line


def _fields(path: Path, number: int, line: str, sep: str, count: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) == count + 1 and not parts[-1].strip():
        parts.pop()  # a trailing separator
    if len(parts) != count:
        # More fields than the format has: a shifted column, or lines ended by a bare CR
        # read as one line; either way the values would land in the wrong fields.
        raise DataError(
            f"{path}:{number}: expected {count} fields separated by {sep!r}, "
            f"found {len(parts)} (truncated, lines not ended by LF, or wrong format?)"
        )
    return parts


def _raw_id(path: Path, number: int, text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise DataError(f"{path}:{number}: empty {what} id")
    return text


def _read_users(path: Path, sep: str, columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Demographics by raw user id; `columns` names the file's fields in order."""
    users: dict[str, dict[str, Any]] = {}
    for number, line in _lines(path):
        row = dict(zip(columns, _fields(path, number, line, sep, len(columns)), strict=True))
        age = row["age"].strip()
        # str.isdigit is true for '²', which int() then refuses.
        if not (age.isascii() and age.isdecimal()):
            raise DataError(f"{path}:{number}: age {row['age']!r} is not an integer")
        users[_raw_id(path, number, row.pop("id"), "user")] = {**row, "age": int(row["age"])}
    return users


def _read_ml100k_genres(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return ML100K_GENRES
    # By the index each line gives, not by line order: u.item's flag j is genre j.
    names: dict[int, str] = {}
    for number, line in _lines(path):
        name, _, index = line.partition("|")
        if not (index.strip().isascii() and index.strip().isdecimal()):
            raise DataError(f"{path}:{number}: expected 'name|index'")
        if int(index) in names:
            raise DataError(f"{path}:{number}: genre index {int(index)} is given twice")
        names[int(index)] = name
    if sorted(names) != list(range(len(names))):
        raise DataError(
            f"{path}: genre indices must run from 0 to {len(names) - 1}, found {sorted(names)}"
        )
    return tuple(names[j] for j in range(len(names)))


# ---------------------------------------------------------------- formats


@dataclass
class _Raw:
    """What a loader read, before indexing."""

    ratings: RawRatings
    items: RawItems = field(default_factory=RawItems.empty)
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw id -> demographics
    genres: tuple[str, ...] = ()
    has_demographics: bool = False
    files: list[Path] = field(default_factory=list)


def _genre_names(items: RawItems) -> tuple[str, ...]:
    return tuple(sorted({g for names in items.genres for g in names}))


def _read_ml100k(root: Path) -> _Raw:
    genres = _read_ml100k_genres(root / "u.genre")
    user_path, item_path = root / "u.user", root / "u.item"
    users = _read_users(user_path, "|", ("id", "age", "gender", "occupation", "zip"))
    items = read_ml100k_items(require(item_path), genres)
    return _Raw(
        ratings=read_ratings(separated_ratings(root / "u.data", "\t")),
        items=items,
        users=users,
        genres=genres,
        has_demographics=True,
        # The genre names and the canonical folds shape what is trained too: an edited
        # u1.base must not resume from checkpoints trained on the old one.
        files=[root / "u.data", user_path, item_path, *_present(root, ML100K_SIDE_FILES)],
    )


def _present(root: Path, names: Sequence[str]) -> list[Path]:
    return [root / name for name in names if (root / name).is_file()]


def _read_ml1m(root: Path) -> _Raw:
    user_path, movie_path = root / "users.dat", root / "movies.dat"
    users = _read_users(user_path, "::", ("id", "gender", "age", "occupation", "zip"))
    items = read_ml1m_items(require(movie_path))
    return _Raw(
        ratings=read_ratings(separated_ratings(root / "ratings.dat", "::")),
        items=items,
        users=users,
        genres=_genre_names(items),
        has_demographics=True,
        files=[root / "ratings.dat", user_path, movie_path],
    )


def _read_ml_latest(root: Path) -> _Raw:
    movie_path = root / "movies.csv"
    items = read_csv_items(movie_path)
    return _Raw(
        ratings=read_ratings(csv_ratings(root / "ratings.csv")),
        items=items,
        genres=_genre_names(items),
        files=[root / "ratings.csv", movie_path],
    )


def _read_generic_csv(path: Path) -> _Raw:
    ratings_path = path if path.is_file() else path / "ratings.csv"
    return _Raw(ratings=read_ratings(csv_ratings(ratings_path)), files=[ratings_path])


# ---------------------------------------------------------------- indexing


@dataclass(frozen=True)
class _IdIndex:
    """Raw ids in data-set order (index p + 1 is ids[p]) with a vectorised lookup."""

    ids: np.ndarray  # str, data-set order
    sorted_ids: np.ndarray  # str, lexicographic
    index_of_sorted: np.ndarray  # int64, data-set index of sorted_ids[j]

    @classmethod
    def of(cls, ordered: np.ndarray) -> _IdIndex:
        sorter = np.argsort(ordered, kind="stable")
        return cls(ordered, ordered[sorter], sorter.astype(np.int64) + 1)

    @classmethod
    def union(cls, *parts: np.ndarray) -> _IdIndex:
        """All distinct ids of `parts`: by number when every id is a number, else by text."""
        values = unique_sorted(np.concatenate([np.asarray(p, dtype=str) for p in parts]))
        if values.size and _all_ascii_digits(values):
            try:
                numbers = values.astype(np.int64)
            except (ValueError, OverflowError):  # longer than int64: Python's ints
                return cls.of(np.array(sorted(values.tolist(), key=int), dtype=str))
            values = values[np.argsort(numbers, kind="stable")]
        return cls.of(values)

    def lookup(self, values: np.ndarray) -> np.ndarray:
        """Data-set index of each value; 0 where a value is not in the index."""
        if self.sorted_ids.size == 0:
            return np.zeros(len(values), np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_ids, values), self.sorted_ids.size - 1)
        return np.where(self.sorted_ids[pos] == values, self.index_of_sorted[pos], 0)


def _all_ascii_digits(values: np.ndarray) -> bool:
    # str.isdigit is true for '²' and '٣' too, which int() then refuses or reads as 3.
    try:
        ascii_bytes = values.astype(np.bytes_)
    except UnicodeEncodeError:
        return False
    return bool(np.all(np.strings.isdigit(ascii_bytes)))


def _user_fields(raw: _Raw) -> tuple[FieldSpec, ...]:
    if not raw.has_demographics:
        return (NONE_FIELD,)
    demo = list(raw.users.values())
    return (
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


def _categorical(name: str, values: Sequence[str]) -> FieldSpec:
    return FieldSpec(name=name, kind="categorical", values=tuple(sorted(set(values))))


def _bucket(spec: FieldSpec, values: np.ndarray) -> np.ndarray:
    """FieldSpec.encode of a bucket field for a whole array (0 where a value is missing)."""
    finite = np.isfinite(values)
    edges = np.asarray(spec.edges, dtype=np.float64)
    index = 1 + np.searchsorted(edges, np.where(finite, values, 0.0), side="right")
    return np.where(finite, index, 0).astype(np.int64)


def rating_scale_of(ratings: np.ndarray) -> RatingScale:
    """[1, 5], widened down to the lowest rating (half stars from 0.5): the readers take
    ratings in (0, 5], and clipping a 0.5 to 1 would make it impossible to predict."""
    low = float(np.min(ratings)) if len(ratings) else RATING_MIN
    return (min(RATING_MIN, low), RATING_MAX)


def _build(name: str, raw: _Raw, source_dir: Path) -> Dataset:
    users = _IdIndex.union(raw.ratings.user_values, np.array(list(raw.users), dtype=str))
    items = _IdIndex.union(raw.ratings.item_values, raw.items.ids)
    user_ids, item_ids = users.ids.tolist(), items.ids.tolist()
    unlisted = len(item_ids) - len(raw.items.ids)
    if unlisted and name != "csv":  # the csv data set has no items file to miss them from
        log.warning(
            "%d rated items are not in the items file: each is titled by its id, without "
            "genres or year",
            unlisted,
        )
    unknown = len(user_ids) - len(raw.users)
    if unknown and raw.users:  # only data sets with a users file can miss users from it
        log.warning(
            "%d rated users are not in the users file: their demographics are unknown",
            unknown,
        )
    user_fields = _user_fields(raw)
    years = np.full(len(item_ids) + 1, np.nan)
    rows = items.lookup(raw.items.ids)
    years[rows] = raw.items.years
    has_years = bool(np.any(np.isfinite(years) & (years != 0)))
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
        rating_scale=rating_scale_of(raw.ratings.rating),
    )

    user_feats = np.zeros((len(user_ids) + 1, len(user_fields)), np.int64)
    user_rows = users.lookup(np.array(list(raw.users), dtype=str))
    for row, demo_row in zip(user_rows.tolist(), raw.users.values(), strict=True):
        for j, spec in enumerate(user_fields):
            user_feats[row, j] = spec.encode(demo_row.get(spec.name))
    item_feats = np.zeros((len(item_ids) + 1, len(item_fields)), np.int64)
    if has_years:
        item_feats[:, 0] = _bucket(item_fields[0], years)
    item_genres, items_meta = _item_tables(raw.items, rows, item_ids, genres)

    ratings = latest_per_pair(
        Ratings(
            user=users.lookup(raw.ratings.user_values)[raw.ratings.user_codes],
            item=items.lookup(raw.ratings.item_values)[raw.ratings.item_codes],
            rating=raw.ratings.rating,
            timestamp=raw.ratings.timestamp,
        ),
        n_users=len(user_ids),
        n_items=len(item_ids),
    )
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


def pair_keys(ratings: Ratings, *, n_users: int, n_items: int) -> np.ndarray:
    """One number per (user, item) pair, in 4 bytes where they fit: the checks sort or
    search these, and their memory adds to the load's peak."""
    dtype = np.uint32 if (n_users + 1) * (n_items + 1) <= np.iinfo(np.uint32).max else np.int64
    key = ratings.user.astype(dtype)
    np.multiply(key, n_items + 1, out=key, casting="unsafe")
    np.add(key, ratings.item, out=key, casting="unsafe")  # in place: one array at a time
    return key


def latest_per_pair(ratings: Ratings, *, n_users: int, n_items: int) -> Ratings:
    """Each (user, item) pair once: its latest rating (by timestamp, then by line), in file
    order. A log where a user rated an item again holds both; training on both would count
    the old opinion, and a split could put one copy in training and the other in test."""
    ordered = pair_keys(ratings, n_users=n_users, n_items=n_items)
    ordered.sort()  # the common case, no repeats, costs this one sort (0.1 s per 10M)
    if not np.any(ordered[1:] == ordered[:-1]):
        return ratings
    del ordered
    by_pair, last = _latest_in_groups(
        pair_keys(ratings, n_users=n_users, n_items=n_items), ratings.timestamp
    )
    keep = np.sort(by_pair[last])
    log.warning(
        "%d ratings repeat a (user, item) pair rated again later: kept each pair's latest "
        "(by timestamp, then by line), %d ratings in all",
        len(ratings) - len(keep),
        len(keep),
    )
    return ratings.subset(keep)


def _latest_in_groups(groups: np.ndarray, timestamp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers ordered by (group, timestamp, row) and, along that order, whether each
    is its group's latest (ties: the later row)."""
    order = np.lexsort((np.arange(len(groups)), timestamp, groups))
    grouped = groups[order]
    is_last = np.ones(len(order), dtype=bool)
    is_last[:-1] = grouped[1:] != grouped[:-1]
    return order, is_last


def _item_tables(
    items: RawItems, rows: np.ndarray, item_ids: list[str], genres: tuple[str, ...]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The genre matrix and the per-item metadata the bundle ships (items.json)."""
    titles: list[str] = list(item_ids)  # an item missing from the items file: its id
    genre_lists: list[list[str]] = [[] for _ in item_ids]
    for row, title, names in zip(rows.tolist(), items.titles, items.genres, strict=True):
        titles[row - 1], genre_lists[row - 1] = title, names
    genre_pos = {g: j for j, g in enumerate(genres)}
    lengths = np.fromiter((len(names) for names in items.genres), np.int64, len(items.genres))
    columns = np.fromiter(
        (genre_pos[g] for names in items.genres for g in names), np.int64, int(lengths.sum())
    )
    item_genres = np.zeros((len(item_ids) + 1, len(genres)), np.float32)
    item_genres[np.repeat(rows, lengths), columns] = 1.0
    meta = [
        {"item_id": mid, "title": title, "genres": names}
        for mid, title, names in zip(item_ids, titles, genre_lists, strict=True)
    ]
    return item_genres, meta


def _index_fold(ds: Dataset, raw: RawRatings, *, source: Path) -> Ratings:
    """A fold file's ratings in the data set's indices; every id must be known."""
    indexed = []
    for what, ids, values, codes in (
        ("user", ds.user_ids, raw.user_values, raw.user_codes),
        ("item", ds.item_ids, raw.item_values, raw.item_codes),
    ):
        index = _IdIndex.of(np.array(ids, dtype=str)).lookup(values)[codes]
        if not np.all(index > 0):
            row = int(np.flatnonzero(index == 0)[0])
            raise DataError(
                f"{source}: rating {row + 1} has {what} id {str(values[codes[row]])!r}, "
                "which the data set (u.data) does not have"
            )
        indexed.append(index)
    return Ratings(user=indexed[0], item=indexed[1], rating=raw.rating, timestamp=raw.timestamp)


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
    """Train/test split by name: a canonical ml-100k fold, random, temporal or none.

    `auto` is `default_split(dataset.name)`. Refuses a catalogue of one item, which loads
    (an export of feedback may hold one) but cannot be trained to rank: scores are
    standardised over the catalogue, and one item has no spread.
    """
    made = _split(dataset, split=split, data_dir=data_dir, seed=seed, test_ratio=test_ratio)
    if dataset.feature_map.n_items < 2:
        raise DataError(
            f"{dataset.source_dir}: {dataset.feature_map.n_items} item in the catalogue; "
            "ranking needs at least 2"
        )
    return made


def _split(
    dataset: Dataset, *, split: str, data_dir: Path | None, seed: int, test_ratio: float
) -> Split:
    if split == AUTO_SPLIT:
        split = default_split(dataset.name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    ratings = dataset.ratings
    if split in CANONICAL_FOLDS:
        folder = Path(data_dir or dataset.source_dir)
        if dataset.name != "ml-100k":
            raise DataError(f"split {split} exists only for ml-100k, not {dataset.name}")
        return _canonical_fold(dataset, folder, split)
    if split == "none":
        return Split(name=split, train=ratings, test=Ratings.empty())
    if split == "random":
        if not 0.0 < test_ratio < 1.0:
            raise DataError(f"test_ratio must lie in (0, 1), got {test_ratio}")
        train, test = holdout(ratings, fraction=test_ratio, seed=seed)
        if len(train) == 0 or len(test) == 0:
            raise DataError(
                f"{len(ratings)} ratings are too few for split random with test ratio "
                f"{test_ratio}: a part would be empty; use more ratings or --split none"
            )
        return Split(name=split, train=train, test=test)
    return _temporal(ratings)


def _canonical_fold(dataset: Dataset, folder: Path, split: str) -> Split:
    """u1.base/u1.test and the like: each pair once per file (as u.data), and in one file
    only: a pair in both would be scored on a rating the model trained on."""
    n_users, n_items = len(dataset.user_ids), len(dataset.item_ids)
    train, test = (
        latest_per_pair(
            _index_fold(
                dataset,
                read_ratings(separated_ratings(folder / f"{split}.{part}", "\t")),
                source=folder / f"{split}.{part}",
            ),
            n_users=n_users,
            n_items=n_items,
        )
        for part in ("base", "test")
    )
    shared = np.isin(
        pair_keys(test, n_users=n_users, n_items=n_items),
        pair_keys(train, n_users=n_users, n_items=n_items),
    )
    if np.any(shared):
        row = int(np.flatnonzero(shared)[0])
        user, item = dataset.user_ids[test.user[row] - 1], dataset.item_ids[test.item[row] - 1]
        raise DataError(
            f"{folder / split}.base and .test share {int(shared.sum())} (user, item) pairs, "
            f"the first ({user!r}, {item!r}): the fold is damaged; restore it, or use "
            "--split random"
        )
    return Split(name=split, train=train, test=test)


def _temporal(ratings: Ratings) -> Split:
    """Per-user leave-last-out: each user's latest rating (ties: the later row) is the test."""
    if not np.any(ratings.timestamp):
        raise DataError(
            "split temporal needs timestamps, and every rating's is 0 (no timestamp "
            "column?); use --split random"
        )
    order, is_last = _latest_in_groups(ratings.user, ratings.timestamp)
    counts = np.bincount(ratings.user)
    is_last &= counts[ratings.user[order]] >= 2  # a user with one rating keeps it for training
    test_index = np.sort(order[is_last])
    if test_index.size == 0:
        raise DataError(
            "split temporal holds out each user's latest rating, but no user has two "
            "ratings; use --split random, or none to train on everything"
        )
    mask = np.zeros(len(ratings), bool)
    mask[test_index] = True
    return Split(name="temporal", train=ratings.subset(~mask), test=ratings.subset(mask))


def holdout(ratings: Ratings, *, fraction: float = 0.1, seed: int = 0) -> tuple[Ratings, Ratings]:
    """A seeded random (train, held-out) partition of a set of ratings."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ratings))
    n_out = round(len(ratings) * fraction)
    return ratings.subset(np.sort(perm[n_out:])), ratings.subset(np.sort(perm[:n_out]))


def popularity(ratings: Ratings, n_items: int) -> np.ndarray:
    """Item indices 1..n_items, most rated first (ties: lower index first)."""
    counts = np.bincount(ratings.item, minlength=n_items + 1)[1:]
    return np.argsort(-counts, kind="stable") + 1
