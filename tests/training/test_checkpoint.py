"""Checkpoints as data: round trips rebuild identical models; stale ones are refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training import checkpoint
from training.data import Dataset, load_dataset
from training.features import FeatureMap, make_batch
from training.models.base import TwoHeadModel, to_inputs
from training.models.ensemble import EnsembleTeacher
from training.models.student import Student, StudentShape
from training.train import TeacherConfig, build_component

CONFIG = TeacherConfig().quick()
COMPONENT_CONFIGS = {"mf": CONFIG.mf, "xdeepfm": CONFIG.xdeepfm, "autoint": CONFIG.autoint}


@pytest.fixture(scope="module")
def dataset(synthetic_ml100k: Path) -> Dataset:
    return load_dataset(synthetic_ml100k)


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter away from its initial value (some initialise to zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def _outputs(model: TwoHeadModel, dataset: Dataset) -> list[torch.Tensor]:
    fm = dataset.feature_map
    rng = np.random.default_rng(0)
    users = rng.integers(0, fm.n_users + 1, 64)
    items = rng.integers(0, fm.n_items + 1, 64)
    model.eval()
    with torch.no_grad():
        out = model.heads(*to_inputs(make_batch(dataset.tables, users, items)))
    return [out[k] for k in sorted(out)]


def _assert_same_model(a: TwoHeadModel, b: TwoHeadModel, dataset: Dataset) -> None:
    assert type(a) is type(b)
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    for x, y in zip(_outputs(a, dataset), _outputs(b, dataset), strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def _component(name: str, dataset: Dataset, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_component(name, dataset.feature_map, COMPONENT_CONFIGS[name], global_mean=3.61)
    _randomise(model, seed)
    return model


@pytest.mark.parametrize("name", ["mf", "xdeepfm", "autoint"])
def test_component_round_trip_rebuilds_an_identical_model(
    dataset: Dataset, tmp_path: Path, name: str
) -> None:
    model = _component(name, dataset, seed=1)
    path = checkpoint.save_component(
        model, tmp_path / f"{name}.pt", name=name, config=COMPONENT_CONFIGS[name],
        fm=dataset.feature_map,
    )  # fmt: skip
    loaded = checkpoint.load_model(path, fm=dataset.feature_map, kind="component")
    _assert_same_model(model, loaded, dataset)
    assert not loaded.training


def test_ensemble_round_trip_keeps_components_and_blend(dataset: Dataset, tmp_path: Path) -> None:
    parts = [_component(name, dataset, seed=k) for k, name in enumerate(COMPONENT_CONFIGS)]
    teacher = EnsembleTeacher(*parts)
    teacher.set_weights(rating=[0.5, 0.3, 0.1], rating_bias=0.2, score=[0.25, 0.5, 0.25])
    teacher.standardise(np.arange(1, 11), dataset.tables)
    path = tmp_path / "teacher.pt"
    checkpoint.save_teacher(teacher, path, config=CONFIG, fm=dataset.feature_map)
    loaded = checkpoint.load_model(path, fm=dataset.feature_map, kind="ensemble")
    assert isinstance(loaded, EnsembleTeacher)
    _assert_same_model(teacher, loaded, dataset)
    assert loaded.rating_weights.tolist() == pytest.approx([0.5, 0.3, 0.1])
    users = np.arange(0, 7)
    torch.testing.assert_close(
        loaded.score_matrix(users, dataset.tables), teacher.score_matrix(users, dataset.tables)
    )


def test_pruned_student_round_trip_keeps_its_shape(dataset: Dataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = Student(dataset.feature_map, shape=StudentShape().scaled(0.25), global_mean=3.4)
    _randomise(student, 2)
    student.prune("user_score_dim", torch.arange(0, 12, 2))
    student.prune("item_rating_dim", torch.tensor([0, 3]))
    student.prune("item_hidden", torch.tensor([0, 3, 5]))
    student.prune("score_factor", torch.arange(5))
    path = tmp_path / "student.pt"
    checkpoint.save_student(student, path, fm=dataset.feature_map)
    loaded = checkpoint.load_model(path, fm=dataset.feature_map, kind="student")
    assert isinstance(loaded, Student)
    assert loaded.shape == student.shape
    assert loaded.shape != StudentShape().scaled(0.25)
    _assert_same_model(student, loaded, dataset)


def test_checkpoint_from_older_model_code_is_refused(
    dataset: Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "mf.pt"
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "code_version", lambda scope="all": "a" * 64)
        checkpoint.save_component(
            _component("mf", dataset, 0), path, name="mf", config=CONFIG.mf,
            fm=dataset.feature_map,
        )  # fmt: skip
    with pytest.raises(checkpoint.StaleCheckpointError) as err:
        checkpoint.load_model(path)
    message = str(err.value)
    assert "a" * 64 in message and checkpoint.code_version("teacher") in message
    assert "retrain" in message


def test_checkpoint_in_another_format_is_refused(dataset: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "mf.pt"
    checkpoint.save_component(
        _component("mf", dataset, 0), path, name="mf", config=CONFIG.mf, fm=dataset.feature_map
    )
    data = torch.load(path, weights_only=True)
    data["format_version"] = checkpoint.FORMAT_VERSION + 1
    torch.save(data, path)
    with pytest.raises(checkpoint.StaleCheckpointError, match="checkpoint format 2") as err:
        checkpoint.load_model(path)
    assert f"reads format {checkpoint.FORMAT_VERSION}" in str(err.value)


def test_pickled_module_from_before_is_refused_not_unpickled(
    dataset: Dataset, tmp_path: Path
) -> None:
    path = tmp_path / "old.pt"
    torch.save(_component("mf", dataset, 0), path)  # how checkpoints used to be written
    with pytest.raises(checkpoint.StaleCheckpointError, match="not a checkpoint of format"):
        checkpoint.load_model(path)


def test_wrong_kind_or_feature_map_is_refused(dataset: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "mf.pt"
    fm = dataset.feature_map
    checkpoint.save_component(
        _component("mf", dataset, 0), path, name="mf", config=CONFIG.mf, fm=fm
    )
    with pytest.raises(checkpoint.CheckpointError, match="component checkpoint, not a student"):
        checkpoint.load_model(path, kind="student")
    other = replace(fm, n_items=fm.n_items + 1)
    with pytest.raises(checkpoint.CheckpointError, match="another feature map"):
        checkpoint.load_model(path, fm=other)
    assert isinstance(
        checkpoint.load_model(path, fm=FeatureMap.from_json(fm.to_json())), TwoHeadModel
    )


@pytest.fixture
def package_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of training/ that code_version reads instead, free to edit."""
    copy = tmp_path / "training"
    shutil.copytree(checkpoint._PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(checkpoint, "_PACKAGE", copy)
    checkpoint.code_version.cache_clear()
    yield copy
    checkpoint.code_version.cache_clear()


def _versions() -> tuple[str, str]:
    """(teacher, all) code versions of the files as they are now."""
    checkpoint.code_version.cache_clear()
    return checkpoint.code_version("teacher"), checkpoint.code_version("all")


def test_code_version_follows_model_code_not_comments(package_copy: Path) -> None:
    base = _versions()
    mf = package_copy / "models" / "mf.py"
    source = mf.read_text()
    mf.write_text(source + "\n# a comment only\n")
    assert _versions() == base
    for name in ("report.py", "ann.py"):  # use trained models: report, export an index
        used = package_copy / name
        used.write_text(used.read_text() + "\nX = 1\n")
    assert _versions() == base
    mf.write_text(source + "\nMODEL_CODE_CHANGED = 1\n")
    changed = _versions()
    assert changed[0] != base[0] and changed[1] != base[1]


def test_teacher_code_version_leaves_distillation_code_out(package_copy: Path) -> None:
    teacher_files = {
        p.relative_to(package_copy).as_posix() for p in checkpoint.model_code_files("teacher")
    }
    # What training.train runs on, followed through imports; no distillation module.
    assert {"train.py", "models/mf.py", "models/layers.py", "features.py", "sparse.py"} <= (
        teacher_files
    )
    assert not teacher_files & {"distill.py", "losses.py", "prune.py", "models/student.py"}
    teacher, everything = _versions()
    distill = package_copy / "distill.py"
    distill.write_text(distill.read_text() + "\nDISTILLATION_CHANGED = 1\n")
    changed_teacher, changed_all = _versions()
    assert changed_teacher == teacher and changed_all != everything
    columnar = package_copy / "columnar.py"  # reached from train.py through data.py
    columnar.write_text(columnar.read_text() + "\nREADER_CHANGED = 1\n")
    assert _versions()[0] != teacher
