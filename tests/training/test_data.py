"""training/data.py: every loader on its format, clear errors, splits, the download path."""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.datagen import write_ml1m, write_ml100k, write_ml_latest
from training import data
from training.data import DataError, Ratings, load_dataset, make_split
from training.seen import SeenIndex

# ---------------------------------------------------------------- loaders


def test_ml100k_loader(synthetic_ml100k: Path) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    fm = ds.feature_map
    assert (fm.n_users, fm.n_items, len(ds.ratings)) == (60, 80, 2000)
    assert [f.name for f in fm.user_fields] == ["age", "gender", "occupation", "zip"]
    assert [f.name for f in fm.item_fields] == ["year"]
    assert fm.genres[:2] == ("unknown", "Action") and fm.n_genres == 19
    assert ds.user_ids[:3] == ["1", "2", "3"]
    assert ds.ratings.user.min() >= 1 and ds.ratings.user.max() <= fm.n_users
    assert ds.tables.user_feats.shape == (61, 4) and ds.tables.item_genres.shape == (81, 19)
    assert np.all(ds.tables.user_feats[0] == 0)  # row 0 is the unknown user
    assert np.all(ds.tables.user_feats[1:] > 0)  # every synthetic user has demographics
    # Item metadata comes from u.item in index order.
    first = ds.items_meta[0]
    assert first["item_id"] == "1" and first["title"].startswith("Movie 1 (")
    row = ds.tables.item_genres[1]
    assert sorted(first["genres"]) == sorted(fm.genres[j] for j in np.flatnonzero(row))
    assert len(ds.fingerprint) == 64


def test_fingerprint_tracks_file_contents(synthetic_ml100k: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_ml100k, copy)
    same = load_dataset(copy, dataset="ml-100k").fingerprint
    assert same == load_dataset(synthetic_ml100k, dataset="ml-100k").fingerprint
    with (copy / "u.data").open("a") as handle:
        handle.write("1\t2\t3\t881250949\n")
    assert load_dataset(copy, dataset="ml-100k").fingerprint != same


@pytest.mark.parametrize("name", ["u1.base", "u4.test", "u.genre"])
def test_fingerprint_tracks_the_folds_and_genre_names(
    synthetic_ml100k: Path, tmp_path: Path, name: str
) -> None:
    # An edited fold must not resume from checkpoints trained on the old one.
    copy = tmp_path / "copy"
    shutil.copytree(synthetic_ml100k, copy)
    before = load_dataset(copy, dataset="ml-100k").fingerprint
    lines = (copy / name).read_text().splitlines(keepends=True)
    (copy / name).write_text("".join(reversed(lines)))
    assert load_dataset(copy, dataset="ml-100k").fingerprint != before


def test_genres_follow_the_index_column_of_u_genre(ml100k_copy: Path) -> None:
    before = load_dataset(ml100k_copy, dataset="ml-100k")
    # The same genres in another line order: the same data set.
    lines = (ml100k_copy / "u.genre").read_text().split()
    (ml100k_copy / "u.genre").write_text("\n".join(reversed(lines)) + "\n")
    after = load_dataset(ml100k_copy, dataset="ml-100k")
    assert after.items_meta == before.items_meta
    assert after.feature_map.genres == before.feature_map.genres
    # A missing genre is refused, not a shift of every genre after it.
    (ml100k_copy / "u.genre").write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    with pytest.raises(DataError, match="genre indices must run from 0"):
        load_dataset(ml100k_copy, dataset="ml-100k")
    (ml100k_copy / "u.genre").write_text(
        "\n".join(f"{line.split('|')[0]}|{j}" for j, line in enumerate(lines[:-1])) + "\n"
    )
    with pytest.raises(DataError, match="19 genre flag columns, but there are 18 genres"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def _same_data(left: data.Dataset, right: data.Dataset) -> None:
    assert left.user_ids == right.user_ids and left.item_ids == right.item_ids
    assert left.items_meta == right.items_meta
    assert left.feature_map.genres == right.feature_map.genres
    np.testing.assert_array_equal(left.tables.user_feats, right.tables.user_feats)
    np.testing.assert_array_equal(left.tables.item_feats, right.tables.item_feats)
    np.testing.assert_array_equal(left.ratings.rating, right.ratings.rating)


@pytest.mark.parametrize(
    ("dataset", "write", "names"),
    [
        ("ml-100k", write_ml100k, ["u.data", "u.item", "u.user", "u.genre"]),
        ("ml-1m", write_ml1m, ["ratings.dat", "movies.dat", "users.dat"]),
    ],
)
def test_a_byte_order_mark_is_not_part_of_the_first_id(
    tmp_path: Path, dataset: str, write: Any, names: list[str]
) -> None:
    plain = load_dataset(write(tmp_path / "plain"), dataset=dataset)
    marked = write(tmp_path / "marked")
    for name in names:
        (marked / name).write_bytes(b"\xef\xbb\xbf" + (marked / name).read_bytes())
    _same_data(load_dataset(marked, dataset=dataset), plain)


def test_ml1m_loader(tmp_path: Path) -> None:
    ds = load_dataset(write_ml1m(tmp_path / "ml-1m"), dataset="ml-1m")
    assert (ds.feature_map.n_users, ds.feature_map.n_items) == (40, 50)
    assert len(ds.ratings) == 800
    assert [f.name for f in ds.feature_map.user_fields] == ["age", "gender", "occupation", "zip"]
    assert ds.items_meta[0]["genres"]  # "A|B" genre lists were split
    assert set(ds.feature_map.genres) >= set(ds.items_meta[0]["genres"])


def test_ml_latest_loader_has_placeholder_fields(tmp_path: Path) -> None:
    ds = load_dataset(write_ml_latest(tmp_path / "ml-latest"), dataset="ml-latest")
    fm = ds.feature_map
    assert [f.name for f in fm.user_fields] == ["none"] and fm.user_field_vocabs == [1]
    assert ds.item_ids[:2] == ["10", "20"]
    assert ds.items_meta[0]["title"].startswith("Film, The 1")  # quoted comma survives
    assert set(np.unique(ds.ratings.rating)) <= {0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0}


def test_generic_csv_loader(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\nalice,m1,4\nbob,m1,2.5\nalice,m2,5\n")
    for given in (path, tmp_path):
        ds = load_dataset(given, dataset="csv")
        assert ds.user_ids == ["alice", "bob"] and ds.item_ids == ["m1", "m2"]
        assert ds.feature_map.genres == ("(none)",) and ds.tables.item_genres.shape == (3, 1)
        np.testing.assert_allclose(ds.ratings.rating, [4.0, 2.5, 5.0])
        assert ds.feature_map.rating_scale == (1.0, 5.0)
    # Half stars from 0.5 (MovieLens' latest sets): the scale reaches down to them.
    path.write_text("user,item,rating\nalice,m1,0.5\nbob,m2,2.5\n")
    assert load_dataset(path, dataset="csv").feature_map.rating_scale == (0.5, 5.0)


def test_a_pair_rated_again_keeps_its_latest_rating(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text(
        "user,item,rating,timestamp\n"
        "alice,m1,2,200\n"  # superseded by the later rating of line 5
        "bob,m1,4,100\n"
        "alice,m2,3,50\n"  # same time as line 6: the later line wins
        "alice,m1,5,300\n"
        "alice,m2,1,50\n"
        "bob,m2,2,10\n"
        "alice,m1,4,250\n"  # later in the file, earlier in time: superseded too
    )
    with caplog.at_level("WARNING", logger="training.data"):
        ds = load_dataset(path, dataset="csv")
    got = [
        (ds.user_ids[u - 1], ds.item_ids[i - 1], float(r), int(t))
        for u, i, r, t in zip(
            ds.ratings.user, ds.ratings.item, ds.ratings.rating, ds.ratings.timestamp, strict=True
        )
    ]
    # One rating per pair, in file order.
    assert got == [
        ("bob", "m1", 4.0, 100), ("alice", "m1", 5.0, 300), ("alice", "m2", 1.0, 50),
        ("bob", "m2", 2.0, 10),
    ]  # fmt: skip
    assert "3 ratings repeat a (user, item) pair" in caplog.text


def test_rated_items_missing_from_the_items_file_are_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,10,4,100\n2,10,3,200\n1,20,5,300\n"
    )
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n20,Heat (1995),Crime\n")
    with caplog.at_level("WARNING", logger="training.data"):
        ds = load_dataset(tmp_path, dataset="ml-latest")
    assert "1 rated items are not in the items file" in caplog.text
    assert [m["title"] for m in ds.items_meta] == ["10", "Heat (1995)"]


def test_ratings_without_repeats_are_kept_as_they_are() -> None:
    ratings = Ratings(
        user=np.array([1, 1, 2]), item=np.array([1, 2, 1]),
        rating=np.array([4, 3, 5], np.float32), timestamp=np.array([3, 2, 1]),
    )  # fmt: skip
    assert data.latest_per_pair(ratings, n_users=2, n_items=2) is ratings
    # The same item index under another user is another pair (keys never collide).
    again = Ratings(
        user=np.array([1, 2]), item=np.array([2, 2]),
        rating=np.array([4, 3], np.float32), timestamp=np.array([1, 1]),
    )  # fmt: skip
    assert data.latest_per_pair(again, n_users=2, n_items=2) is again


def test_ids_are_ordered_by_number_only_when_all_are_ascii_digits(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n1,10,4\n1,2,3\n2,10,5\n")
    assert load_dataset(path, dataset="csv").item_ids == ["2", "10"]
    # '²' is a digit to str.isdigit but no number: text order, not a failed int().
    path.write_text("user,item,rating\n1,10,4\n1,2,3\n2,\u00b2,5\n", encoding="utf-8")
    assert load_dataset(path, dataset="csv").item_ids == ["10", "2", "\u00b2"]


# ---------------------------------------------------------------- malformed input


@pytest.fixture()
def ml100k_copy(synthetic_ml100k: Path, tmp_path: Path) -> Path:
    target = tmp_path / "ml-100k"
    shutil.copytree(synthetic_ml100k, target)
    return target


def _edit_line(path: Path, number: int, text: str) -> None:
    lines = path.read_text(encoding="latin-1").splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="latin-1")


def test_truncated_line_names_file_and_line(ml100k_copy: Path) -> None:
    _edit_line(ml100k_copy / "u.data", 7, "12\t")
    with pytest.raises(DataError, match=r"u\.data:7: expected 3 fields .*truncated"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_non_numeric_rating_names_file_and_line(ml100k_copy: Path) -> None:
    _edit_line(ml100k_copy / "u.data", 3, "1\t2\tgood\t881250949")
    with pytest.raises(DataError, match=r"u\.data:3: rating 'good' is not a number"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_out_of_range_rating(ml100k_copy: Path) -> None:
    _edit_line(ml100k_copy / "u.data", 2, "1\t2\t7\t881250949")
    with pytest.raises(DataError, match=r"u\.data:2: rating 7\.0 outside"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_missing_file_is_named(ml100k_copy: Path) -> None:
    (ml100k_copy / "u.item").unlink()
    with pytest.raises(DataError, match=r"u\.item: file not found"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_bad_genre_flags_name_file_and_line(ml100k_copy: Path) -> None:
    lines = (ml100k_copy / "u.item").read_text(encoding="latin-1").splitlines()
    _edit_line(ml100k_copy / "u.item", 4, lines[3][:-1] + "2")
    with pytest.raises(DataError, match=r"u\.item:4: genre flags must be 0 or 1"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_bad_age_and_truncated_user(ml100k_copy: Path) -> None:
    _edit_line(ml100k_copy / "u.user", 5, "5|old|M|writer|12345")
    with pytest.raises(DataError, match=r"u\.user:5: age 'old'"):
        load_dataset(ml100k_copy, dataset="ml-100k")
    _edit_line(ml100k_copy / "u.user", 5, "5|33")
    with pytest.raises(DataError, match=r"u\.user:5: expected 5 fields"):
        load_dataset(ml100k_copy, dataset="ml-100k")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("5|\u00b2|M|writer|12345", "age '²' is not an integer"),
        ("5|33|M|writer|12345|extra", "expected 5 fields separated by '|', found 6"),
    ],
)
def test_a_user_line_read_wrongly_is_refused(ml100k_copy: Path, line: str, message: str) -> None:
    _edit_line(ml100k_copy / "u.user", 5, line)
    with pytest.raises(DataError, match=rf"u\.user:5: {re.escape(message)}"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_a_users_file_ended_by_bare_crs_is_refused(ml100k_copy: Path) -> None:
    # Read as one line, it used to give one user, the others' demographics unknown.
    path = ml100k_copy / "u.user"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r"))
    with pytest.raises(DataError, match=r"u\.user:1: expected 5 fields .* not ended by LF"):
        load_dataset(ml100k_copy, dataset="ml-100k")


def test_a_trailing_separator_on_a_user_line_is_taken(ml100k_copy: Path) -> None:
    lines = (ml100k_copy / "u.user").read_text(encoding="latin-1").splitlines()
    _edit_line(ml100k_copy / "u.user", 5, lines[4] + "|")
    plain = load_dataset(ml100k_copy, dataset="ml-100k")
    assert plain.feature_map.user_fields


def test_rated_users_missing_from_the_users_file_are_counted(
    ml100k_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = ml100k_copy / "u.user"
    lines = path.read_text(encoding="latin-1").splitlines()
    path.write_text("\n".join(lines[:5]) + "\n", encoding="latin-1")
    data = load_dataset(ml100k_copy, dataset="ml-100k")
    assert f"{len(data.user_ids) - 5} rated users are not in the users file" in caplog.text


def test_a_fold_whose_files_share_a_pair_is_refused(ml100k_copy: Path) -> None:
    base = (ml100k_copy / "u1.base").read_text().splitlines()
    with (ml100k_copy / "u1.test").open("a") as handle:
        handle.write(base[0] + "\n")
    data = load_dataset(ml100k_copy, dataset="ml-100k")
    with pytest.raises(DataError, match=r"u1\.base and \.test share 1 \(user, item\) pairs"):
        make_split(data, split="u1")


def test_a_pair_repeated_in_a_fold_file_counts_once(
    ml100k_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = load_dataset(ml100k_copy, dataset="ml-100k")
    before = make_split(data, split="u1")
    base = (ml100k_copy / "u1.base").read_text().splitlines()
    (ml100k_copy / "u1.base").write_text("\n".join([*base, base[0]]) + "\n")
    after = make_split(data, split="u1")
    assert len(after.train) == len(before.train)
    assert "1 ratings repeat a (user, item) pair" in caplog.text


def test_a_catalogue_of_one_item_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n" + "".join(f"u{u},i1,{u % 5 + 1}\n" for u in range(30)))
    data = load_dataset(path, dataset="csv")  # an export of feedback may hold one item
    with pytest.raises(DataError, match="1 item in the catalogue; ranking needs at least 2"):
        make_split(data, split="none")


def test_malformed_csv_and_ml1m(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    # Columns are chosen by header names now, so the header must name them.
    path.write_text("user,item,rating\n1,2,3\n1,2\n")
    with pytest.raises(DataError, match=r"ratings\.csv:3: expected user,item,rating"):
        load_dataset(path, dataset="csv")
    path.write_text("u,i,r\n1,2,3\n")
    with pytest.raises(DataError, match=r"ratings\.csv:1: unknown column 'u' in the header"):
        load_dataset(path, dataset="csv")
    root = write_ml1m(tmp_path / "ml-1m")
    _edit_line(root / "ratings.dat", 2, "1::2")
    with pytest.raises(DataError, match=r"ratings\.dat:2: expected 3 fields separated by '::'"):
        load_dataset(root, dataset="ml-1m")


def test_unknown_dataset_split_and_missing_dir(synthetic_ml100k: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown dataset 'netflix'"):
        load_dataset(synthetic_ml100k, dataset="netflix")
    with pytest.raises(DataError, match="no such file or directory"):
        load_dataset(tmp_path / "nope", dataset="ml-100k")
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    with pytest.raises(DataError, match="unknown split 'u9'"):
        make_split(ds, split="u9")
    latest = load_dataset(write_ml_latest(tmp_path / "latest"), dataset="ml-latest")
    with pytest.raises(DataError, match="exists only for ml-100k"):
        make_split(latest, split="u1")


def test_fold_with_unknown_id_is_refused(ml100k_copy: Path) -> None:
    rows = len((ml100k_copy / "u1.test").read_text().splitlines())
    with (ml100k_copy / "u1.test").open("a") as handle:
        handle.write("9999\t1\t4\t881250949\n")
    ds = load_dataset(ml100k_copy, dataset="ml-100k")
    expected = rf"{ml100k_copy}/u1\.test: rating {rows + 1} has user id '9999', which the data"
    with pytest.raises(DataError, match=expected):
        make_split(ds, split="u1")


# ---------------------------------------------------------------- splits


def _pairs(r: Ratings) -> set[tuple[int, int]]:
    return set(zip(r.user.tolist(), r.item.tolist(), strict=True))


@pytest.mark.parametrize("fold", ["u1", "u3", "u5", "ua", "ub"])
def test_canonical_folds_partition_the_ratings(synthetic_ml100k: Path, fold: str) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    split = make_split(ds, split=fold)
    assert len(split.train) + len(split.test) == len(ds.ratings)
    assert not _pairs(split.train) & _pairs(split.test)
    assert _pairs(split.train) | _pairs(split.test) == _pairs(ds.ratings)
    expected_test = len((synthetic_ml100k / f"{fold}.test").read_text().splitlines())
    assert len(split.test) == expected_test and len(split.test) > 0


def test_random_split_sizes_disjoint_and_seeded(synthetic_ml100k: Path) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    split = make_split(ds, split="random", seed=4, test_ratio=0.25)
    assert len(split.test) == round(0.25 * len(ds.ratings))
    assert len(split.train) + len(split.test) == len(ds.ratings)
    assert not _pairs(split.train) & _pairs(split.test)
    again = make_split(ds, split="random", seed=4, test_ratio=0.25)
    np.testing.assert_array_equal(split.test.user, again.test.user)
    other = make_split(ds, split="random", seed=5, test_ratio=0.25)
    assert _pairs(other.test) != _pairs(split.test)
    with pytest.raises(DataError, match="test_ratio"):
        make_split(ds, split="random", test_ratio=1.0)


def test_temporal_split_holds_out_each_users_latest(synthetic_ml100k: Path) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    split = make_split(ds, split="temporal")
    users_with_two = int(np.sum(np.bincount(ds.ratings.user) >= 2))
    assert len(split.test) == users_with_two
    assert np.unique(split.test.user).size == len(split.test)  # one per user
    assert len(split.train) + len(split.test) == len(ds.ratings)
    assert not _pairs(split.train) & _pairs(split.test)
    for user, stamp in zip(split.test.user[:10], split.test.timestamp[:10], strict=True):
        assert stamp >= split.train.timestamp[split.train.user == user].max()


def test_temporal_split_refuses_what_it_cannot_hold_out(tmp_path: Path) -> None:
    path = tmp_path / "ratings.csv"
    path.write_text("user,item,rating\n1,a,4\n1,b,3\n2,a,5\n2,b,2\n")
    with pytest.raises(DataError, match="split temporal needs timestamps"):
        make_split(load_dataset(path, dataset="csv"), split="temporal")
    path.write_text("user,item,rating,timestamp\n1,a,4,10\n2,b,3,20\n3,a,5,30\n")
    with pytest.raises(DataError, match="no user has two ratings"):
        make_split(load_dataset(path, dataset="csv"), split="temporal")


def test_split_none_trains_on_everything(synthetic_ml100k: Path) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    split = make_split(ds, split="none")
    assert len(split.train) == len(ds.ratings) and len(split.test) == 0


def test_seen_index_and_popularity() -> None:
    ratings = Ratings(
        user=np.array([2, 1, 2, 2, 1]),
        item=np.array([3, 1, 1, 3, 2]),
        rating=np.ones(5, np.float32),
        timestamp=np.zeros(5, np.int64),
    )
    seen = SeenIndex.from_ratings(ratings, n_users=3, n_items=4)
    assert seen.indptr.tolist() == [0, 0, 2, 4, 4]
    assert seen.indices.tolist() == [1, 2, 1, 3]  # user 2's duplicate (2, 3) counted once
    # Items 1 and 3 have two ratings each (tie: lower index first), 2 one, 4 none.
    assert data.popularity(ratings, 4).tolist() == [1, 3, 2, 4]


# ---------------------------------------------------------------- download


@pytest.fixture()
def archive_server(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A local HTTP server with ml-100k.zip (synthetic files); yields (base URL, md5)."""
    root = tmp_path / "served"
    write_ml100k(root / "src" / "ml-100k", n_users=20, n_items=30, n_ratings=300, seed=3)
    archive = root / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted((root / "src").rglob("*")):
            zipped.write(path, path.relative_to(root / "src"))
    md5 = hashlib.md5(archive.read_bytes(), usedforsecurity=False).hexdigest()
    handler = partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", md5
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_download_checks_md5_and_caches(
    archive_server: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, md5 = archive_server
    cache = tmp_path / "cache"
    folder = data.download_archive("ml-100k", cache_dir=cache, base_url=base, md5=md5)
    assert (folder / "u.data").is_file() and (folder / ".complete").is_file()
    # load_dataset(None) goes through the same download (base URL from the environment).
    monkeypatch.setenv("MOVIELENS_BASE_URL", base)
    monkeypatch.setitem(data.ARCHIVE_MD5, "ml-100k", md5)
    ds = load_dataset(None, dataset="ml-100k", cache_dir=tmp_path / "cache2")
    assert ds.feature_map.n_users == 20 and len(ds.ratings) == 300
    # A second call uses the cache: the server is no longer needed.
    again = data.download_archive("ml-100k", cache_dir=cache, base_url="http://127.0.0.1:9/")
    assert again == folder


def test_download_with_wrong_md5_is_refused(
    archive_server: tuple[str, str], tmp_path: Path
) -> None:
    base, _ = archive_server
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"md5 .* does not match the published 0{32}"):
        data.download_archive("ml-100k", cache_dir=cache, base_url=base, md5="0" * 32)
    assert not (cache / "ml-100k").exists()  # nothing unpacked


def test_download_failure_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download failed"):
        data.download_archive(
            "ml-100k", cache_dir=tmp_path, base_url="http://127.0.0.1:9/", md5="0" * 32
        )
