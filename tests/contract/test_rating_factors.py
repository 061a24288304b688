"""The factored rating contract: the arithmetic, the manifest entry and the loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from contract.errors import BundleError
from contract.manifest import RatingFactorsRef
from contract.rating_factors import RatingFactors, load_rating_factors

SHA = "ab" * 32


def _ref(users_dim: int = 3, items_dim: int = 3) -> RatingFactorsRef:
    return RatingFactorsRef.model_validate(
        {
            "users": {"file": "u.npy", "sha256": SHA, "rows": 3, "dim": users_dim},
            "items": {"file": "i.npy", "sha256": SHA, "rows": 2, "dim": items_dim},
            "offset": 3.5,
            "parity_max_abs_diff": 1e-6,
        }
    )


def test_a_rating_is_the_offset_plus_one_dot_product() -> None:
    # users[u] = [p_u, b_u, 1], items[i - 1] = [q_i, 1, b_i]
    users = np.array([[0, 0, 1], [2.0, 0.1, 1], [-1.0, -0.2, 1]], np.float32)
    items = np.array([[0.5, 1, 0.3], [1.5, 1, -0.4]], np.float32)
    factors = RatingFactors(users=users, items=items, offset=3.5)
    got = factors.rate(np.array([1, 2, 1], np.int64), np.array([2, 1, 1], np.int64))
    # 3.5 + 2*1.5 + 0.1 - 0.4;  3.5 - 0.5 - 0.2 + 0.3;  3.5 + 1 + 0.1 + 0.3
    np.testing.assert_allclose(got, [6.2, 3.1, 4.9], rtol=1e-6)


def test_the_entry_names_both_files_and_needs_one_width() -> None:
    assert set(_ref().file_refs("student")) == {"student.rating_users", "student.rating_items"}
    with pytest.raises(ValidationError, match="differ in width"):
        _ref(items_dim=4)


def test_the_loader_checks_rows_and_values(tmp_path: Path) -> None:
    np.save(tmp_path / "u.npy", np.ones((3, 3), np.float32))
    np.save(tmp_path / "i.npy", np.ones((2, 3), np.float32))
    factors = load_rating_factors(tmp_path, _ref(), n_users=2, n_items=2)
    assert factors.offset == 3.5
    assert not factors.users.flags.writeable
    with pytest.raises(BundleError, match=r"u.npy is float32 \(3, 3\)"):
        load_rating_factors(tmp_path, _ref(), n_users=3, n_items=2)
    np.save(tmp_path / "i.npy", np.full((2, 3), np.inf, np.float32))
    with pytest.raises(BundleError, match="NaN or infinite"):
        load_rating_factors(tmp_path, _ref(), n_users=2, n_items=2)
