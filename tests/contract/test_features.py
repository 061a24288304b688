"""The encoding rules of the feature map, edge cases included: the one place they are tested.

Training encodes its data with `FieldSpec.encode` and the service encodes query parameters
with it, so these answers hold on both sides.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from contract.errors import BundleError
from contract.features import NONE_FIELD, FeatureMap, FieldSpec

AGE = FieldSpec(name="age", kind="bucket", edges=(18, 25, 35, 45, 50, 56, 100))
GENDER = FieldSpec(name="gender", kind="categorical", values=("F", "M"))
ZIP = FieldSpec(name="zip", kind="prefix", length=1, values=tuple(str(d) for d in range(10)))
OCCUPATION = FieldSpec(name="occupation", kind="categorical", values=("doctor", "other", "writer"))


def test_basic_rules() -> None:
    assert [AGE.encode(v) for v in (None, 10, 18, 24, 56, 200)] == [0, 1, 2, 2, 7, 8]
    assert AGE.encode("not a number") == 0
    assert [GENDER.encode(v) for v in ("F", "M", "X", None)] == [1, 2, 0, 0]
    assert [ZIP.encode(v) for v in ("55455", "0", "K1A", "")] == [6, 1, 0, 0]
    assert NONE_FIELD.encode("anything") == 0


def test_surrounding_whitespace_is_stripped() -> None:
    assert GENDER.encode(" F") == GENDER.encode("F\t") == GENDER.encode("\n F \n") == 1
    assert ZIP.encode(" 55455") == 6  # stripped before the prefix is taken
    assert AGE.encode(" 24 ") == 2
    assert [GENDER.encode(v) for v in ("", "   ")] == [0, 0]
    assert AGE.encode("  ") == 0


def test_case_exact_first_then_casefold_when_unambiguous() -> None:
    assert GENDER.encode("f") == 1 and GENDER.encode("m") == 2
    assert OCCUPATION.encode("WRITER") == 3 and OCCUPATION.encode(" Doctor ") == 1
    mixed = FieldSpec(name="code", kind="categorical", values=("ab", "AB", "Cd"))
    assert mixed.encode("ab") == 1 and mixed.encode("AB") == 2  # exact wins
    assert mixed.encode("Ab") == 0  # two values fold to "ab": ambiguous, so unknown
    assert mixed.encode("cD") == 3
    assert FieldSpec(name="s", kind="categorical", values=("Straße",)).encode("STRASSE") == 1
    postal = FieldSpec(name="p", kind="prefix", length=2, values=("K1", "M5"))
    assert postal.encode("k1a 0b1") == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "nan", "inf", "-Infinity"])
def test_nan_and_infinity_are_unknown(bad: object) -> None:
    assert AGE.encode(bad) == 0
    assert GENDER.encode(bad) == 0
    assert AGE.encode(np.float32(math.nan)) == 0


def test_out_of_range_numbers_go_to_the_first_or_last_bucket() -> None:
    assert AGE.encode(-5) == 1 and AGE.encode(-1e300) == 1
    assert AGE.encode(1e300) == AGE.vocab - 1 == 8
    assert AGE.encode(100) == 8  # an edge belongs to the bucket above it
    assert AGE.encode(99.999) == 7


def test_unknown_values_are_zero() -> None:
    assert GENDER.encode("other") == 0
    assert OCCUPATION.encode("astronaut") == 0
    assert ZIP.encode("Q") == 0
    assert AGE.encode("twenty") == 0


def test_non_string_raw_values() -> None:
    # Numbers count as their text for categorical and prefix fields.
    digits = FieldSpec(name="d", kind="categorical", values=("1", "2", "2.5"))
    assert [digits.encode(v) for v in (1, 2.0, np.int64(2), 2.5, np.float64(1.0))] == [
        1,
        2,
        2,
        3,
        1,
    ]
    assert ZIP.encode(55455) == 6
    # Numbers and numeric strings place in buckets; numpy scalars too.
    assert [AGE.encode(v) for v in (24, 24.9, "24", np.int32(24), np.float32(24.0))] == [2] * 5
    # Booleans name neither a category nor a number.
    flags = FieldSpec(name="f", kind="categorical", values=("True", "False", "1"))
    assert [flags.encode(v) for v in (True, False, np.bool_(True))] == [0, 0, 0]
    assert [AGE.encode(v) for v in (True, False)] == [0, 0]
    # Anything else (containers, bytes, objects) is unknown rather than str()-ed.
    assert [GENDER.encode(v) for v in (["F"], b"F", object())] == [0, 0, 0]
    assert AGE.encode([24]) == 0


def test_every_index_lies_inside_the_vocabulary() -> None:
    rng = np.random.default_rng(0)
    raws: list[object] = [None, "", " ", "F", "m", "55455", 3, -3, 1e9, math.nan, True]
    raws += rng.normal(40, 30, 50).tolist()
    for spec in (AGE, GENDER, ZIP, OCCUPATION, NONE_FIELD):
        assert all(0 <= spec.encode(raw) < spec.vocab for raw in raws)


def test_invalid_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="kind"):
        FieldSpec(name="x", kind="placeholder")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="increase strictly"):
        FieldSpec(name="x", kind="bucket", edges=(3, 1))
    with pytest.raises(ValueError, match="finite"):
        FieldSpec(name="x", kind="bucket", edges=(1, math.inf))
    with pytest.raises(ValueError, match="unique"):
        FieldSpec(name="x", kind="categorical", values=("a", "a"))
    with pytest.raises(ValueError, match="length"):
        FieldSpec(name="x", kind="prefix", values=("a",))


def _feature_map() -> FeatureMap:
    return FeatureMap(
        n_users=3,
        n_items=4,
        user_fields=(AGE, GENDER, OCCUPATION, ZIP),
        item_fields=(FieldSpec(name="year", kind="bucket", edges=(1980.0,)),),
        genres=("Action", "Drama"),
    )


def test_feature_map_json_round_trip_and_user_rows() -> None:
    fm = _feature_map()
    assert FeatureMap.from_json(fm.to_json()) == fm
    half_stars = dataclasses.replace(fm, rating_scale=(0.5, 5.0))
    assert FeatureMap.from_json(half_stars.to_json()).rating_scale == (0.5, 5.0)
    # A map written before the scale was recorded clips to the default.
    older = {k: v for k, v in fm.to_json().items() if k != "rating_scale"}
    assert FeatureMap.from_json(older).rating_scale == (1.0, 5.0)
    row = fm.encode_user({"age": " 30", "gender": "f", "zip": 12345})
    assert row.dtype == np.int64 and row.tolist() == [3, 1, 0, 2]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version 2 is not 1"),
        (lambda d: d["user_fields"][0].update(vocab=99), "vocab 99, its values imply 9"),
        (lambda d: d["user_fields"][1].update(kind="placeholder"), "kind"),
        (lambda d: d.update(user_fields=[]), "user_fields"),
        (lambda d: d.update(n_items=0), "n_items"),
        (lambda d: d["user_fields"][2].update(values=["a", "a"]), "unique"),
        (lambda d: d.update(rating_scale=[5, 1]), "low < high"),
    ],
)
def test_invalid_feature_maps_are_refused(edit: object, message: str) -> None:
    data = _feature_map().to_json()
    edit(data)  # type: ignore[operator]
    with pytest.raises(BundleError, match=message):
        FeatureMap.from_json(data)
