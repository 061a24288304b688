"""The automatic choice of the ranking distillation scope for large catalogues, and of the
batch size that bounds the catalogue passes of a long epoch."""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest

from tests.datagen import write_ml100k
from tests.training.test_distill import quick_teacher
from training import distill, distill_config
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


def test_batches_stay_as_tuned_on_movielens_100k_sized_epochs() -> None:
    config = StudentConfig()
    # ml-100k: about 6,600 lists an epoch over 1,682 items, ~100 steps of 64 lists.
    assert config.batch_plan(6_600, 1682) == (config.lists_per_batch, config.lr)
    assert replace(config, max_epoch_steps=0).batch_plan(10**6, 1682) == (64, config.lr)


def test_batches_grow_to_cap_the_steps_of_a_long_epoch() -> None:
    config = StudentConfig()
    lists, lr = config.batch_plan(52_841, 4000)  # the ML-1M-shaped set's epoch
    assert lists == math.ceil(52_841 / config.max_epoch_steps) == 265
    assert math.ceil(52_841 / lists) <= config.max_epoch_steps
    assert lr == pytest.approx(config.lr * math.sqrt(265 / 64))
    # A batch's catalogue scores stay within the bound that chose the catalogue scope.
    lists, _ = config.batch_plan(10**6, 15_000)
    assert lists == KD_CATALOGUE_CELLS // 15_000
    # In list scope a step costs what its lists cost: nothing to amortise.
    assert config.batch_plan(10**6, 50_000) == (config.lists_per_batch, config.lr)


def test_distillation_trains_with_the_batch_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    steps: list[int] = []
    original = distill.Distillation.train_step

    def counted(self, ex):  # type: ignore[no-untyped-def]
        steps.append(int(ex["user"].shape[0]))
        return original(self, ex)

    monkeypatch.setattr(distill.Distillation, "train_step", counted)
    cfg = StudentConfig(quick=True, progress=False, epochs=2, prune=False, max_epoch_steps=2)
    with caplog.at_level(logging.INFO, logger="training.distill"):
        _, info = distill_student(ds, split.train, quick_teacher(ds), config=cfg)
    assert info["batch_lists"] > cfg.effective().lists_per_batch
    assert info["lr"] > cfg.lr
    assert len(steps) <= 2 * cfg.max_epoch_steps  # two epochs
    assert max(steps) == info["batch_lists"]
    assert f"batches of {info['batch_lists']} lists" in caplog.text
