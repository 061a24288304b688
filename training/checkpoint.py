"""Checkpoints as data: a model's state dict plus the config that rebuilds it.

A checkpoint is `{format_version, code_version, kind, config, state_dict}`, the way nanoGPT
saves them, read back with `torch.load(weights_only=True)`: nothing in the file is code, so
moving or renaming a module never breaks a checkpoint, and loading one never runs code.
Loading rebuilds the model from `config` and loads the state dict strictly.

`code_version` hashes the source of the code the weights depend on (see `code_version`):
a teacher's checkpoint the teacher's training code, a student's all the model code.
A checkpoint written by other code, or in another format, is refused with both versions
named rather than loaded into a model it may no longer fit, or fit with another meaning.

Kinds: "component" (one teacher component: its name and ComponentConfig), "ensemble"
(the three components' configs; the blend weights and standardisation statistics are
buffers, so they travel in the state dict), "student" (its possibly pruned StudentShape).
Every kind carries the feature map the model was built for.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import os
import pickle
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from training.features import FeatureMap
from training.models.base import TwoHeadModel
from training.models.ensemble import COMPONENTS, EnsembleTeacher
from training.models.layers import TowerScoring
from training.models.student import Student, StudentShape
from training.train import (
    AutoIntConfig,
    ComponentConfig,
    MFConfig,
    TeacherConfig,
    XDeepFMConfig,
    build_component,
)

log = logging.getLogger(__name__)

# Bump when the layout of the dictionary below changes.
FORMAT_VERSION = 1

Kind = Literal["component", "ensemble", "student"]
KINDS: tuple[Kind, ...] = ("component", "ensemble", "student")

_CONFIG_CLASSES: dict[str, type[ComponentConfig]] = {
    "mf": MFConfig,
    "xdeepfm": XDeepFMConfig,
    "autoint": AutoIntConfig,
}

_PACKAGE = Path(__file__).resolve().parent
# What writes the exported graphs, item matrices and ANN indexes: a change here redoes the
# export step of a cached run (training/pipeline.py) but keeps its trained weights.
_EXPORT_CODE = ("ann.py", "export.py", "graph_fusion.py", "rating_factors.py", "towers.py")
# Modules of training/ that only use trained models (evaluate, export, publish, report,
# orchestrate) and this file, whose layout FORMAT_VERSION versions. Every other module,
# a new one included, counts: the models' maths, the feature map they embed, the data
# they are trained on and the training and distillation code that produced the weights.
_NOT_MODEL_CODE = frozenset(
    {
        "__init__.py",
        "__main__.py",
        "baselines.py",
        "bundle.py",
        "checkpoint.py",
        "evaluate.py",
        "pipeline.py",
        "report.py",
        *_EXPORT_CODE,
    }
)


class CheckpointError(RuntimeError):
    """A checkpoint cannot be loaded; the message says why and what to do."""


class StaleCheckpointError(CheckpointError):
    """A checkpoint from another code version or checkpoint format."""


# What each scope's weights are produced by: "teacher" is the code `training.train` runs
# on (imports followed, transitively), so a change to distillation alone keeps cached
# teachers valid; "all" is every model module (students, and the pipeline's run key).
Scope = Literal["all", "teacher"]
_SCOPE_ROOTS: dict[str, tuple[str, ...]] = {"teacher": ("training.train",)}
_KIND_SCOPE: dict[str, Scope] = {"component": "teacher", "ensemble": "teacher", "student": "all"}


def _is_model_code(path: Path) -> bool:
    return not (path.parent == _PACKAGE and path.name in _NOT_MODEL_CODE)


def _module_path(name: str) -> Path | None:
    """The file of module `training.x.y` under _PACKAGE, if it is one."""
    parts = name.split(".")[1:]
    for path in (
        _PACKAGE.joinpath(*parts).with_suffix(".py"),
        _PACKAGE.joinpath(*parts, "__init__.py"),
    ):
        if parts and path.is_file():
            return path
    return None


def _imported(path: Path) -> set[str]:
    """Every `training...` module `path` imports (TYPE_CHECKING and lazy imports too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from training import x` may import the module training.x.
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] == _PACKAGE.name}


def model_code_files(scope: Scope = "all") -> list[Path]:
    """The source files `code_version(scope)` hashes, in a fixed order."""
    if scope == "all":
        return [p for p in sorted(_PACKAGE.rglob("*.py")) if _is_model_code(p)]
    found: set[Path] = set()
    todo = [p for p in map(_module_path, _SCOPE_ROOTS[scope]) if p is not None]
    while todo:
        path = todo.pop()
        if path not in found:
            found.add(path)
            todo.extend(p for p in map(_module_path, _imported(path)) if p is not None)
    return sorted(p for p in found if _is_model_code(p))


@lru_cache(maxsize=2)
def code_version(scope: Scope = "all") -> str:
    """sha256 over the model code of `scope`: each file's path and its syntax tree.

    The syntax tree (`ast.dump`) leaves out comments and formatting, so reformatting or
    rewording a comment keeps the version; any change to code or docstrings changes it.
    """
    return _digest(model_code_files(scope))


def export_code_version() -> str:
    """sha256 over the export code (`_EXPORT_CODE`), as `code_version` hashes model code."""
    return _digest([_PACKAGE / name for name in _EXPORT_CODE])


def _digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(_PACKAGE.parent).as_posix().encode())
        digest.update(b"\0")
        digest.update(ast.dump(ast.parse(path.read_text(encoding="utf-8"))).encode())
        digest.update(b"\0")
    return digest.hexdigest()


# ---------------------------------------------------------------- save


def save_component(
    model: TowerScoring, path: Path, *, name: str, config: ComponentConfig, fm: FeatureMap
) -> Path:
    """One teacher component, rebuilt on load with `build_component(name, fm, config)`."""
    if name not in _CONFIG_CLASSES:
        raise ValueError(f"unknown component {name!r}; components are {', '.join(COMPONENTS)}")
    payload = {"name": name, "component": asdict(config), "feature_map": fm.to_json()}
    return _write(path, kind="component", config=payload, model=model)


def save_teacher(
    teacher: EnsembleTeacher, path: Path, *, config: TeacherConfig, fm: FeatureMap
) -> Path:
    """The ensemble: its components' configs (from `config`) and the whole state dict."""
    components = {"mf": config.mf, "xdeepfm": config.xdeepfm, "autoint": config.autoint}
    payload = {
        "components": {name: asdict(components[name]) for name in COMPONENTS},
        "feature_map": fm.to_json(),
    }
    return _write(path, kind="ensemble", config=payload, model=teacher)


def save_student(student: Student, path: Path, *, fm: FeatureMap) -> Path:
    """A student, rebuilt on load from its current (possibly pruned) shape."""
    payload = {"shape": student.shape.as_dict(), "feature_map": fm.to_json()}
    return _write(path, kind="student", config=payload, model=student)


def _write(path: Path, *, kind: Kind, config: dict[str, Any], model: TwoHeadModel) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {
        "format_version": FORMAT_VERSION,
        "code_version": code_version(_KIND_SCOPE[kind]),
        "kind": kind,
        "config": config,
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }
    # Written beside the target and renamed: a crash never leaves half a checkpoint.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- load


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint dictionary, after checking its format and code versions."""
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as err:
        raise StaleCheckpointError(
            f"{path} is not a checkpoint of format {FORMAT_VERSION} (perhaps a pickled "
            f"module from before checkpoints were data, or a damaged file): {err}"
        ) from err
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise StaleCheckpointError(
            f"{path} is not a checkpoint of format {FORMAT_VERSION}: no format_version"
        )
    found = checkpoint["format_version"]
    if found != FORMAT_VERSION:
        raise StaleCheckpointError(
            f"{path} has checkpoint format {found!r}; this code reads format "
            f"{FORMAT_VERSION}: retrain, or load it with the code that wrote it"
        )
    if checkpoint.get("kind") not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {checkpoint.get('kind')!r}")
    written_by = checkpoint.get("code_version")
    current = code_version(_KIND_SCOPE[checkpoint["kind"]])
    if written_by != current:
        raise StaleCheckpointError(
            f"{path} was written by model code version {written_by!r}; this is model code "
            f"version {current!r}: retrain, or load it with the code that wrote it"
        )
    return dict(checkpoint)


def load_model(
    path: Path, *, fm: FeatureMap | None = None, kind: Kind | None = None
) -> TwoHeadModel:
    """Rebuilds the model a checkpoint describes, in eval mode.

    `fm`, when given, must be the feature map the model was built for; `kind`, when
    given, is the kind the caller expects.
    """
    checkpoint = read_checkpoint(path)
    found: Kind = checkpoint["kind"]
    if kind is not None and found != kind:
        raise CheckpointError(f"{path} holds a {found} checkpoint, not a {kind}")
    config = checkpoint["config"]
    stored = FeatureMap.from_json(config["feature_map"])
    if fm is not None and fm.to_json() != config["feature_map"]:
        raise CheckpointError(
            f"{path} was built for another feature map ({stored.n_users} users, "
            f"{stored.n_items} items) than this data set's ({fm.n_users} users, "
            f"{fm.n_items} items)"
        )
    model = _rebuild(found, config, stored)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the state dict does not fit its config: {err}") from err
    return model.eval()


def _rebuild(kind: Kind, config: dict[str, Any], fm: FeatureMap) -> TwoHeadModel:
    # Building initialises weights from the global generator; loading a checkpoint must
    # not shift what a seeded run draws next (a resumed pipeline distils after this).
    with torch.random.fork_rng(devices=[]):
        return _build(kind, config, fm)


def _build(kind: Kind, config: dict[str, Any], fm: FeatureMap) -> TwoHeadModel:
    if kind == "student":
        return Student(fm, shape=StudentShape(**config["shape"]))
    if kind == "component":
        return _component(config["name"], config["component"], fm)
    parts = [_component(name, config["components"][name], fm) for name in COMPONENTS]
    return EnsembleTeacher(*parts)


def _component(name: str, values: dict[str, Any], fm: FeatureMap) -> TowerScoring:
    if name not in _CONFIG_CLASSES:
        raise CheckpointError(f"unknown component {name!r} in checkpoint")
    # global_mean is the `mu` buffer, which the state dict restores.
    return build_component(name, fm, _CONFIG_CLASSES[name](**values), global_mean=0.0)
