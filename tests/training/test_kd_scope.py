"""The automatic choice of the ranking distillation scope for large catalogues."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pytest

from tests.datagen import write_ml100k
from tests.training.test_distill import quick_teacher
from training import distill_config
from training.data import load_dataset, make_split
from training.distill import distill_student
from training.distill_config import KD_CATALOGUE_CELLS, StudentConfig


def test_auto_keeps_the_catalogue_for_movielens_sized_catalogues() -> None:
    config = StudentConfig()
    assert config.ranking_kd_scope == "auto"
    assert config.kd_scope(1682) == "catalogue"  # ml-100k
    assert config.kd_scope(3952) == "catalogue"  # ML-1M


def test_auto_switches_to_lists_on_large_catalogues() -> None:
    config = StudentConfig()
    assert config.kd_scope(50_000) == "list"
    assert config.kd_scope(1_000_000) == "list"
    # The bound is on lists x items: smaller batches keep the catalogue longer.
    small = replace(config, lists_per_batch=16)
    assert small.kd_scope(KD_CATALOGUE_CELLS // 16) == "catalogue"
    assert small.kd_scope(KD_CATALOGUE_CELLS // 16 + 1) == "list"


@pytest.mark.parametrize("scope", ["catalogue", "list"])
def test_an_explicit_scope_is_kept(scope: str) -> None:
    config = replace(StudentConfig(), ranking_kd_scope=scope)  # type: ignore[arg-type]
    assert config.kd_scope(10) == scope
    assert config.kd_scope(10_000_000) == scope


def test_distillation_runs_and_logs_the_scope_it_chose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    # This catalogue counts as large once a batch may score only 10 cells.
    monkeypatch.setattr(distill_config, "KD_CATALOGUE_CELLS", 10)
    cfg = StudentConfig(quick=True, progress=False, epochs=2, prune=False)
    with caplog.at_level(logging.INFO, logger="training.distill"):
        _, info = distill_student(ds, split.train, quick_teacher(ds), config=cfg)
    assert info["ranking_kd_scope"] == "list"
    assert info["config"]["ranking_kd_scope"] == "auto"
    assert "ranking distillation over the sampled lists (auto, 40 items" in caplog.text
