"""training/columnar.py and the vectorised indexing in training/data.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training import columnar
from training.columnar import FLOAT, IDS, DataError, Layout, read_columns, unique_sorted
from training.data import YEAR_EDGES, _bucket, _IdIndex
from training.features import FieldSpec
from training.movielens import read_ratings, separated_ratings


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64])
def test_double_colon_split_across_chunks(
    chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'::' cut between two reads is still one separator; a lone ':' stays text."""
    path = tmp_path / "movies.dat"
    path.write_text("1::Alien: Resurrection (1997)::Sci-Fi\n22::Ran (1985)::War|Drama\n333::a:::\n")
    monkeypatch.setattr(columnar, "_CHUNK_BYTES", chunk)
    table = read_columns(
        path, Layout(delimiter="::", n_fields=3), dict.fromkeys((0, 1, 2), columnar.TEXT)
    )
    assert table.column("f0").to_pylist() == ["1", "22", "333"]
    assert table.column("f1").to_pylist() == ["Alien: Resurrection (1997)", "Ran (1985)", "a"]
    assert table.column("f2").to_pylist() == ["Sci-Fi", "War|Drama", ":"]


def test_unit_separator_in_a_double_colon_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ratings.dat"
    # a ':' inside a field sends the file to the rewriting reader, which needs 0x1f free
    path.write_bytes(b"1::a:b::3::4\n1::\x1f::3::4\n")
    with pytest.raises(DataError, match=r"ratings\.dat: contains the control byte 0x1f"):
        read_ratings(separated_ratings(path, "::"))


def test_latin1_text_is_transcoded(tmp_path: Path) -> None:
    path = tmp_path / "u.item"
    path.write_bytes("1|Caf\xe9 (1990)\n".encode("latin-1"))
    table = read_columns(path, Layout(delimiter="|", n_fields=2), {1: columnar.TEXT})
    assert table.column("f1").to_pylist() == ["Caf\xe9 (1990)"]


def test_ids_are_dictionary_codes(tmp_path: Path) -> None:
    path = tmp_path / "r.tsv"
    path.write_text("b\t1\na\t2\n b \t3\na\t4\n")
    table = read_columns(path, Layout(delimiter="\t", n_fields=2), {0: IDS, 1: FLOAT})
    codes, values = columnar.id_codes(table.column("f0"), "latin-1")
    assert values.tolist() == ["a", "b"]  # ' b ' is the id 'b'
    assert codes.tolist() == [1, 0, 1, 0] and codes.dtype == np.int32


def test_unique_sorted_equals_np_unique() -> None:
    rng = np.random.default_rng(0)
    numbers = rng.integers(0, 50, 1000)
    texts = np.array([f"id{n}" for n in numbers])
    np.testing.assert_array_equal(unique_sorted(numbers), np.unique(numbers))
    np.testing.assert_array_equal(unique_sorted(texts), np.unique(texts))
    assert unique_sorted(np.zeros(0, np.int64)).size == 0


def test_id_order_numeric_when_all_numbers_else_text() -> None:
    numeric = _IdIndex.union(np.array(["10", "9", "100"]), np.array(["9", "2"]))
    assert numeric.ids.tolist() == ["2", "9", "10", "100"]
    mixed = _IdIndex.union(np.array(["10", "9", "b", "a"]))
    assert mixed.ids.tolist() == ["10", "9", "a", "b"]
    huge = _IdIndex.union(np.array(["99999999999999999999", "100000000000000000000", "1"]))
    assert huge.ids.tolist() == ["1", "99999999999999999999", "100000000000000000000"]
    # lookup: 1-based data-set positions, 0 for an unknown id
    assert numeric.lookup(np.array(["100", "2", "7", "10"])).tolist() == [4, 1, 0, 3]
    assert _IdIndex.union(np.zeros(0, str)).lookup(np.array(["1"])).tolist() == [0]


def test_vectorised_bucket_equals_field_encode() -> None:
    spec = FieldSpec(name="year", kind="bucket", edges=YEAR_EDGES)
    values = np.array([np.nan, 1900.0, 1940.0, 1940.5, 1994.0, 1995.0, 2015.0, 2030.0, -np.inf])
    expected = [spec.encode(None if np.isnan(v) else v) for v in values]
    assert _bucket(spec, values).tolist() == expected


def test_double_colon_ratings_with_a_colon_inside_an_id(tmp_path: Path) -> None:
    """The fast ':' reading refuses a ':' inside a field; the rewriting reader takes it."""
    path = tmp_path / "ratings.dat"
    path.write_text("1::10::4::100\n2::tt:7::3.5::200\n")
    raw = read_ratings(separated_ratings(path, "::"))
    assert raw.item_values[raw.item_codes].tolist() == ["10", "tt:7"]
    assert raw.rating.tolist() == [4.0, 3.5] and raw.timestamp.tolist() == [100, 200]
