"""The one-command pipeline: real quick runs on generated data, resumption, --split none."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from training import bundle as bundle_mod
from training import checkpoint, export
from training import pipeline as pipeline_mod
from training.data import load_dataset
from training.features import FeatureMap
from training.pipeline import PipelineConfig, run_pipeline


def _config(data: Path, out: Path, **changes: Any) -> PipelineConfig:
    values: dict[str, Any] = {
        "data_dir": data,
        "dataset": "ml-100k",
        "split": "u1",
        "out_dir": out,
        "quick": True,
        "progress": False,
        "latency_runs": 3,
    }
    values.update(changes)
    return PipelineConfig(**values)


def test_bundle_models_match_their_pytorch_checkpoints(models_root: Path, bundle_dir: Path) -> None:
    # The exported teacher (all three components and the blend) and student equal the
    # trained PyTorch models on fresh random inputs.
    manifest = bundle_mod.verify_bundle(bundle_dir)
    work = models_root / ".work" / manifest["training"]["run_key"]
    fm = FeatureMap.load(bundle_dir / "feature_map.json")
    for key in ("teacher", "student"):
        model = checkpoint.load_model(work / f"{key}.pt", fm=fm)
        parity = export.check_parity(model, bundle_dir / f"{key}.onnx", fm, batch_sizes=(1, 50))
        assert parity.max_abs_diff <= 1e-4
    assert type(checkpoint.load_model(work / "teacher.pt")).__name__ == "EnsembleTeacher"
    assert manifest["models"]["student"]["params"] < manifest["models"]["teacher"]["params"]


def test_report_and_metrics_describe_the_bundle(bundle_dir: Path) -> None:
    report = (bundle_dir / "report.md").read_text()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["version"] in report
    for key in ("teacher", "student", "student_int8"):
        assert f"| {key} |" in report
    metrics = json.loads((bundle_dir / "metrics.json").read_text())
    assert metrics["eval_on"] == "test"
    teacher = metrics["models"]["teacher"]["metrics"]
    assert teacher["rmse"] == pytest.approx(manifest["models"]["teacher"]["metrics"]["rmse"])
    int8 = metrics["models"]["student_int8"]
    assert int8["kept"] == ("student_int8" in manifest["models"])
    # The session bundle ships INT8 without the gate (conftest): the reason says which.
    assert int8["kept"]
    assert int8["reason"] == "within targets" or int8["reason"].startswith(
        "kept without the quality gate: INT8 "
    )


def test_pipeline_resumes_after_a_crash(
    synthetic_ml100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "models"
    config = _config(synthetic_ml100k, out)
    ctx = run_pipeline(config, until="student")
    for step in ("teacher", "fisher", "student"):
        assert (ctx.work / f"{step}.json").is_file()
    assert not (ctx.work / "export.json").exists()
    assert bundle_mod.current_bundle(out) is None

    calls: list[str] = []
    real_evaluate = pipeline_mod.step_evaluate

    def crash(ctx: pipeline_mod.Context) -> dict[str, Any]:
        calls.append("evaluate")
        raise RuntimeError("simulated crash in evaluate")

    def must_not_run(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(pipeline_mod, "train_teacher", must_not_run)
    monkeypatch.setattr(pipeline_mod, "distill_student", must_not_run)
    monkeypatch.setitem(pipeline_mod._STEP_FNS, "evaluate", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_pipeline(config)
    assert calls == ["evaluate"]
    assert (ctx.work / "export.json").is_file()
    assert bundle_mod.current_bundle(out) is None  # nothing half-done was published

    monkeypatch.setitem(pipeline_mod._STEP_FNS, "evaluate", real_evaluate)
    monkeypatch.setitem(pipeline_mod._STEP_FNS, "export", must_not_run)
    resumed = run_pipeline(config)
    published = pipeline_mod.bundle_path(resumed)
    assert bundle_mod.current_bundle(out) == published.resolve()
    manifest = bundle_mod.verify_bundle(published)
    assert manifest["version"] == json.loads((ctx.work / "export.json").read_text())["version"]

    # A third run finds everything done and re-verifies the same bundle.
    again = run_pipeline(config)
    assert pipeline_mod.bundle_path(again) == published
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert visible == {"current", published.name}


def test_an_export_code_change_exports_again_from_the_trained_models(
    synthetic_ml100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(synthetic_ml100k, tmp_path / "models")
    ctx = run_pipeline(config, until="export")
    first = json.loads((ctx.work / "export.json").read_text())
    assert first["export_code"] == checkpoint.export_code_version()

    def must_not_run(*args: object, **kwargs: object) -> Any:
        raise AssertionError("a trained model was trained again")

    monkeypatch.setattr(pipeline_mod, "train_teacher", must_not_run)
    monkeypatch.setattr(pipeline_mod, "distill_student", must_not_run)
    # Unchanged export code: the export is reused as it is.
    reused = {k: v for k, v in first.items() if k != pipeline_mod.OUTPUTS_KEY}
    assert run_pipeline(config, until="export").state["export"] == reused
    # As if ann.py (or towers.py, export.py) had changed since the export was written.
    monkeypatch.setattr(checkpoint, "export_code_version", lambda: "e" * 64)
    again = run_pipeline(config, until="export")
    assert again.work == ctx.work
    assert again.state["export"]["export_code"] == "e" * 64
    assert again.state["export"]["version"] != first["version"]


def test_split_none_builds_a_production_bundle(synthetic_ml100k: Path, tmp_path: Path) -> None:
    out = tmp_path / "models"
    ctx = run_pipeline(_config(synthetic_ml100k, out, split="none", seed=1))
    bundle = pipeline_mod.bundle_path(ctx)
    manifest = bundle_mod.verify_bundle(bundle)
    assert manifest["dataset"]["split"] == "none"
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    assert manifest["dataset"]["n_train"] == len(ds.ratings)
    with np.load(bundle / "seen.npz") as seen:
        assert seen["indices"].shape[0] == len(ds.ratings)  # every rating is "seen"
    # No held-out test set: the manifest carries no (in-sample) quality numbers.
    assert all(entry["metrics"] == {} for entry in manifest["models"].values())
    assert "in-sample" in (bundle / "report.md").read_text()


def test_work_dir_depends_on_inputs(synthetic_ml100k: Path, tmp_path: Path) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    base = _config(synthetic_ml100k, tmp_path)
    keys = {
        pipeline_mod.run_key(base, ds),
        pipeline_mod.run_key(_config(synthetic_ml100k, tmp_path, seed=3), ds),
        pipeline_mod.run_key(_config(synthetic_ml100k, tmp_path, split="u2"), ds),
        pipeline_mod.run_key(_config(synthetic_ml100k, tmp_path, quick=False), ds),
        pipeline_mod.run_key(_config(synthetic_ml100k, tmp_path, prune_ratio=0.5), ds),
    }
    assert len(keys) == 5
    assert pipeline_mod.run_key(base, ds) == pipeline_mod.run_key(
        _config(synthetic_ml100k, tmp_path), ds
    )


def test_unknown_step_is_refused(synthetic_ml100k: Path, tmp_path: Path) -> None:
    with pytest.raises(pipeline_mod.PipelineError, match="unknown step 'deploy'"):
        run_pipeline(_config(synthetic_ml100k, tmp_path), until="deploy")


def test_work_dir_depends_on_the_model_code_version(
    synthetic_ml100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset(synthetic_ml100k, dataset="ml-100k")
    config = _config(synthetic_ml100k, tmp_path)
    before = pipeline_mod.run_key(config, ds)
    monkeypatch.setattr(checkpoint, "code_version", lambda scope="all": "0" * 64)
    assert pipeline_mod.run_key(config, ds) != before


def test_a_stale_checkpoint_is_logged_and_retrained(
    synthetic_ml100k: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = _config(synthetic_ml100k, tmp_path / "models")
    ctx = run_pipeline(config, until="teacher")
    path = ctx.work / "teacher.pt"
    # As if older model code had written the checkpoint into this work folder.
    stale = torch.load(path, weights_only=True)
    stale["code_version"] = "0" * 64
    torch.save(stale, path)

    trained: list[int] = []
    real_train = pipeline_mod.train_teacher

    def counting(*args: Any, **kwargs: Any) -> Any:
        trained.append(1)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "train_teacher", counting)
    with caplog.at_level("WARNING", logger="training.pipeline"):
        run_pipeline(config, until="teacher")
    assert trained == [1]
    warning = "\n".join(r.getMessage() for r in caplog.records)
    current = checkpoint.code_version("teacher")
    assert "0" * 64 in warning and current in warning
    assert checkpoint.read_checkpoint(path)["code_version"] == current


@pytest.fixture(scope="module")
def finished_run(synthetic_ml100k: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder after one complete quick run: its bundle and the work folder."""
    out = tmp_path_factory.mktemp("finished") / "models"
    run_pipeline(_config(synthetic_ml100k, out))
    return out


def _truncate(path: Path, size: int) -> None:
    with path.open("r+b") as handle:
        handle.truncate(size)


def _remove_bundle(work: Path) -> None:
    # Without a published bundle to re-verify, the bundle step builds one from the work
    # folder's files, so a damaged file there cannot slip through to it.
    published = bundle_mod.current_bundle(work.parent.parent)
    assert published is not None
    shutil.rmtree(published)


def _truncated_fisher_state(work: Path) -> None:
    _truncate(work / "fisher.json", 10)


def _empty_evaluate_state(work: Path) -> None:
    (work / "evaluate.json").write_text("{}\n")


def _export_state_not_an_object(work: Path) -> None:
    (work / "export.json").write_text("[]\n")


def _report_deleted(work: Path) -> None:
    (work / "report.md").unlink()
    _remove_bundle(work)


def _student_onnx_truncated(work: Path) -> None:
    _truncate(work / "student.onnx", 100)
    _remove_bundle(work)


# Each damages a finished run's saved state as a crash, a full disk or a stray edit might:
# (damage, the step that must run again with every step after it, the file the warning names).
DAMAGES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated fisher.json": (_truncated_fisher_state, "fisher", "fisher.json"),
    "empty evaluate.json": (_empty_evaluate_state, "evaluate", "evaluate.json"),
    "export.json a list": (_export_state_not_an_object, "export", "export.json"),
    "report.md deleted": (_report_deleted, "report", "report.md"),
    "student.onnx truncated": (_student_onnx_truncated, "export", "student.onnx"),
}


def _steps_run(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The steps that run from now on, in order (each still runs the real step)."""
    ran: list[str] = []

    def counted(real: pipeline_mod.StepFn, name: str) -> pipeline_mod.StepFn:
        def step(ctx: pipeline_mod.Context) -> dict[str, Any]:
            ran.append(name)
            return real(ctx)

        return step

    for name, real in list(pipeline_mod._STEP_FNS.items()):
        monkeypatch.setitem(pipeline_mod._STEP_FNS, name, counted(real, name))
    return ran


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_step_state_runs_the_step_again(
    damage: str,
    finished_run: Path,
    synthetic_ml100k: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    out = tmp_path / "models"
    shutil.copytree(finished_run, out, symlinks=True)
    (work,) = (out / ".work").iterdir()
    hurt, step, named = DAMAGES[damage]
    hurt(work)

    ran = _steps_run(monkeypatch)
    with caplog.at_level("WARNING", logger="training.pipeline"):
        ctx = run_pipeline(_config(synthetic_ml100k, out))

    assert ran == list(pipeline_mod.STEPS[pipeline_mod.STEPS.index(step) :])
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{step}: saved state not reused (") and named in warnings[0]
    bundle = pipeline_mod.bundle_path(ctx)
    assert bundle_mod.current_bundle(out) == bundle.resolve()
    bundle_mod.verify_bundle(bundle)
    # The state written again is whole: a further run reuses every step.
    ran.clear()
    run_pipeline(_config(synthetic_ml100k, out))
    assert ran == ["bundle"]


def test_a_state_written_before_file_records_is_still_reused(
    finished_run: Path, synthetic_ml100k: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Work folders written before steps recorded their files' sha256 resume as they did.
    out = tmp_path / "models"
    shutil.copytree(finished_run, out, symlinks=True)
    (work,) = (out / ".work").iterdir()
    for path in work.glob("*.json"):
        state = json.loads(path.read_text())
        assert isinstance(state.pop(pipeline_mod.OUTPUTS_KEY), dict)
        path.write_text(json.dumps(state))

    ran = _steps_run(monkeypatch)
    ctx = run_pipeline(_config(synthetic_ml100k, out))
    assert ran == ["bundle"]
    assert pipeline_mod.OUTPUTS_KEY not in ctx.state["export"]
