"""The one-command pipeline: data -> teacher -> fisher -> student -> export -> evaluate ->
report -> bundle.

Every step checkpoints its output under `<out-dir>/.work/<run-key>/`, where the run key
hashes everything the result depends on (input files, split, seed, configs and the
version of the model code); a re-run with the same inputs skips finished steps, so an
interrupted pipeline resumes where it stopped. A step whose saved state is damaged (its
JSON unreadable or incomplete, a file it wrote missing or changed) runs again, with a
warning that names the file. The last step publishes the bundle and
switches `models/current`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.layout import sha256_file
from contract.ratings import DEFAULT_RATING_SCALE, RatingScale
from training import bundle as bundle_mod
from training import checkpoint, distributed
from training import export as export_mod
from training.bundle import RetrievalFiles
from training.component_pool import rank_cpus
from training.data import Dataset, Split, holdout, load_dataset, make_split
from training.device import resolve_device
from training.distill import distill_student
from training.distill_config import StudentConfig
from training.evaluate import bounded_users, format_table, protocol_p
from training.features import FeatureTables
from training.fisher_analysis import fisher_report
from training.models.base import TwoHeadModel, count_params
from training.rating_factors import export_rating_factors
from training.report import write_student_report
from training.towers import ANN_MIN_ITEMS, export_towers, ort_tower_scorer
from training.train import TeacherConfig, train_teacher

log = logging.getLogger(__name__)

STEPS = ("data", "teacher", "fisher", "student", "export", "evaluate", "report", "bundle")
# Steps every torchrun rank runs (DistributedDataParallel); rank 0 alone runs the others.
DISTRIBUTED_STEPS = ("teacher", "student")
MODEL_KEYS = ("teacher", "student", "student_int8")


class PipelineError(RuntimeError):
    """A pipeline step cannot go on; the message says what to fix."""


@dataclass
class PipelineConfig:
    data_dir: Path | None = None  # None downloads the official archive
    dataset: str = "ml-100k"
    split: str = "u1"
    out_dir: Path = Path("models")
    quick: bool = False
    seed: int = 0
    # Torch threads. 0 = auto: one per teacher component process (the processes are the
    # parallelism there), and this rank's share of the usable CPUs in the steps that run
    # in one process (Fisher, student), which on two cores take about 40% less time.
    threads: int = 0
    prune_ratio: float | None = None  # None keeps the student config's default
    latency_runs: int = 30
    make_current: bool = True
    progress: bool = True
    cache_dir: Path | None = None
    # Catalogues larger than this ship an IVF index for approximate retrieval.
    ann_min_items: int = ANN_MIN_ITEMS
    device: str = "auto"  # training.device: teacher, student and PyTorch evaluation
    # Teacher components trained side by side (training/component_pool.py); 0 = auto: one
    # process per component as the CPUs allow, but one in --quick mode, where starting a
    # process costs more than the seconds its tiny models train.
    jobs: int = 0
    compile: bool = False  # TeacherConfig.compile
    # False ships the INT8 student even when it misses the quality gate (the manifest's
    # int8_check says so): for test bundles that must carry the file, whose tiny models
    # pass or miss the gate depending on the machine's float kernels.
    int8_gate: bool = True

    def step_threads(self) -> int:
        """Torch threads of the steps that run in one process per rank."""
        if self.threads > 0:
            return self.threads
        return rank_cpus()

    def teacher_config(self) -> TeacherConfig:
        config = TeacherConfig(
            seed=self.seed,
            threads=self.threads if self.threads > 0 else 1,
            progress=self.progress,
            device=self.device,
            jobs=self.jobs if self.jobs > 0 else (1 if self.quick else 0),
            compile=self.compile,
        )
        return config.quick() if self.quick else config

    def student_config(self) -> StudentConfig:
        config = StudentConfig(
            seed=self.seed,
            threads=self.step_threads(),
            progress=self.progress,
            quick=self.quick,
            device=self.device,
        )
        if self.prune_ratio is not None:
            config = replace(config, prune_ratio=self.prune_ratio)
        return config


def _plain(value: Any) -> Any:
    """JSON-ready copy of configs and reports (dataclasses, paths, numpy values)."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, np.generic | np.ndarray):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value) if isinstance(value, Path) else repr(value)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_plain(data), indent=2, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


@dataclass
class Context:
    """What the steps share; each step reads and extends it."""

    config: PipelineConfig
    dataset: Dataset
    split: Split
    eval_split: Split  # what metrics are computed on (see `_eval_split`)
    work: Path
    state: dict[str, Any] = field(default_factory=dict)
    teacher: TwoHeadModel | None = None
    student: TwoHeadModel | None = None


def _eval_split(split: Split, *, seed: int) -> tuple[Split, str]:
    """The split metrics and the INT8 decision are measured on.

    With `--split none` there is no test set; the INT8 check then compares fp32 and INT8
    on a 10 % part of the training data, which is in-sample and only good for that
    relative comparison, so the manifest carries no metrics for such bundles.
    """
    if len(split.test) > 0:
        return split, "test"
    fit, held = holdout(split.train, fraction=0.1, seed=seed)
    return Split(name=f"{split.name}-insample", train=fit, test=held), "in-sample"


# Settings that change how fast a run goes, not what it computes.
_NOT_IN_KEY = ("progress", "threads", "device", "jobs")


def run_key(config: PipelineConfig, dataset: Dataset) -> str:
    """Names the work folder: equal keys mean the checkpoints there can be reused.

    The model code's version is part of the key, so a code change trains afresh instead
    of reusing checkpoints the old code wrote.
    """
    teacher = {k: v for k, v in config.teacher_config().to_dict().items() if k not in _NOT_IN_KEY}
    student = {k: v for k, v in config.student_config().to_json().items() if k not in _NOT_IN_KEY}
    payload = {
        "teacher": _plain(teacher),
        "student": _plain(student),
        "fingerprint": dataset.fingerprint,
        "dataset": config.dataset,
        "split": config.split,
        "seed": config.seed,
        "quick": config.quick,
        "prune_ratio": config.prune_ratio,
        "code_version": checkpoint.code_version(),
        "ann_min_items": config.ann_min_items,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return f"{config.dataset}-{config.split}-{'quick-' if config.quick else ''}{digest[:12]}"


# ---------------------------------------------------------------- steps


def step_teacher(ctx: Context) -> dict[str, Any]:
    path = ctx.work / "teacher.pt"
    config = ctx.config.teacher_config()
    teacher, info = train_teacher(ctx.dataset, ctx.split.train, config=config)
    if distributed.current().is_main:
        checkpoint.save_teacher(teacher, path, config=config, fm=ctx.dataset.feature_map)
    ctx.teacher = teacher
    return {"checkpoint": path.name, "params": count_params(teacher), "info": info}


def step_fisher(ctx: Context) -> dict[str, Any]:
    cfg = ctx.config.student_config().effective()
    torch.set_num_threads(cfg.threads)  # the teacher step left its own setting
    report = fisher_report(
        _need(ctx.teacher, "teacher"),
        ctx.dataset,
        ctx.split.train,
        examples=cfg.fisher_examples,
        positives=cfg.list_positives,
        negatives=cfg.list_negatives,
        temperature=cfg.temperature,
        chunk=cfg.fisher_chunk,
        seed=cfg.seed,
    )
    return {"report": report}


def step_student(ctx: Context) -> dict[str, Any]:
    path = ctx.work / "student.pt"
    student, info = distill_student(
        ctx.dataset,
        ctx.split.train,
        _need(ctx.teacher, "teacher"),
        config=ctx.config.student_config(),
    )
    if distributed.current().is_main:
        checkpoint.save_student(student, path, fm=ctx.dataset.feature_map)
    ctx.student = student
    return {"checkpoint": path.name, "params": count_params(student), "info": info}


def step_export(ctx: Context) -> dict[str, Any]:
    fm = ctx.dataset.feature_map
    version = bundle_mod.make_version(ctx.config.dataset, ctx.config.split)
    metadata = {"bundle_version": version, "dataset": ctx.config.dataset}
    out: dict[str, Any] = {
        "version": version,
        "export_code": checkpoint.export_code_version(),
        "models": {},
    }
    for key, model in (("teacher", ctx.teacher), ("student", ctx.student)):
        path = ctx.work / bundle_mod.MODEL_FILES[key]
        export_mod.export_onnx(_need(model, key), fm, path, metadata={**metadata, "model": key})
        parity = export_mod.check_parity(_need(model, key), path, fm)
        towers = export_towers(
            _need(model, key),
            ctx.dataset.tables,
            fm,
            out_dir=ctx.work,
            stem=key,
            metadata={**metadata, "model": f"{key}.user_tower"},
            ann_min_items=ctx.config.ann_min_items,
            seed=ctx.config.seed,
        )
        rating_graph = _rating_graph(ctx, key)
        factors = export_rating_factors(
            _need(model, key),
            ctx.dataset.tables,
            ctx.work / rating_graph["file"],
            out_dir=ctx.work,
            stem=key,
            seed=ctx.config.seed,
        )
        out["models"][key] = {
            "file": path.name,
            "parity_max_abs_diff": parity.max_abs_diff,
            "retrieval": towers.to_state(),
            "rating_graph": rating_graph,
            "rating_factors": None if factors is None else factors.to_state(),
        }
    int8 = ctx.work / bundle_mod.MODEL_FILES["student_int8"]
    export_mod.quantize_int8(ctx.work / bundle_mod.MODEL_FILES["student"], int8)
    drift = export_mod.compare_onnx(ctx.work / bundle_mod.MODEL_FILES["student"], int8, fm)
    out["models"]["student_int8"] = {
        "file": int8.name,
        "rating_drift_vs_fp32": drift,
        "rating_graph": _rating_graph(ctx, "student_int8"),
    }
    return out


def _rating_graph(ctx: Context, key: str) -> dict[str, Any]:
    """The model's rating graph, written next to its pair graph (training/export.py)."""
    target = ctx.work / bundle_mod.RATING_GRAPH_FILES[key]
    parity = export_mod.export_rating_graph(
        ctx.work / bundle_mod.MODEL_FILES[key], target, ctx.dataset.feature_map
    )
    return {"file": target.name, "parity_max_abs_diff": parity}


def onnx_metrics(
    path: Path,
    tables: FeatureTables,
    split: Split,
    *,
    n_users: int,
    n_items: int,
    towers: tuple[Path, Path],
    max_users: int | None = None,
    rating_scale: RatingScale = DEFAULT_RATING_SCALE,
) -> dict[str, float]:
    """Protocol P metrics of an exported model, computed with ONNX Runtime itself.

    The ranking is scored as the service ranks, with `towers` (user-tower graph, item
    matrix): one tower run and one matrix product per block of users; ratings come from
    the pair graph at `path`. `max_users` ranks a seeded sample of test users (large
    catalogues, see `eval_users`).
    """
    session = export_mod.ort_session(path, threads=1)

    def predict(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return export_mod.ort_pair_predict(session, tables, users, items)[0]

    return protocol_p(
        predict,
        ort_tower_scorer(*towers, tables),
        train=split.train,
        test=split.test,
        n_users=n_users,
        n_items=n_items,
        max_users=max_users,
        rating_scale=rating_scale,
    )


# The exported models score every (user, item) pair of the catalogue one by one: past this
# many pairs per model, the evaluation ranks a seeded sample of test users instead
# (ml-100k and ML-1M-sized data stay exact), and latency is timed over fewer runs.
EVAL_PAIRS = 1 << 26


def eval_users(n_items: int) -> int:
    """Test users the evaluation step ranks on a catalogue of `n_items`."""
    return bounded_users(n_items, cells=EVAL_PAIRS, floor=32)


def step_evaluate(ctx: Context) -> dict[str, Any]:
    fm = ctx.dataset.feature_map
    exported = ctx.state["export"]["models"]
    results: dict[str, Any] = {}
    max_users = eval_users(fm.n_items)
    runs = min(ctx.config.latency_runs, max(3, EVAL_PAIRS // 4 // fm.n_items))
    log.info("evaluation ranks at most %d test users; latency over %d runs", max_users, runs)
    for key in MODEL_KEYS:
        path = ctx.work / exported[key]["file"]
        # The INT8 student ranks with the fp32 student's towers, as the service does.
        retrieval = exported[key].get("retrieval") or exported["student"]["retrieval"]
        metrics = onnx_metrics(
            path,
            ctx.dataset.tables,
            ctx.eval_split,
            n_users=fm.n_users,
            n_items=fm.n_items,
            towers=(ctx.work / retrieval["user_tower"], ctx.work / retrieval["items"]),
            max_users=max_users,
            rating_scale=fm.rating_scale,
        )
        latency = export_mod.ort_latency_ms(path, fm, ctx.dataset.tables, threads=1, runs=runs)
        results[key] = {"metrics": metrics, "latency_ms": latency}
        log.info("%s: %s, %.3f ms/user", key, _short(metrics), latency)
    keep, reason = export_mod.int8_acceptable(
        results["student_int8"]["metrics"], results["student"]["metrics"]
    )
    if not keep and not ctx.config.int8_gate:
        keep, reason = True, f"kept without the quality gate: {reason}"
    results["student_int8"]["kept"] = keep
    results["student_int8"]["reason"] = reason
    log.info("INT8 student %s: %s", "kept" if keep else "dropped", reason)
    return {"eval_on": ctx.state["eval_on"], "models": results}


def _short(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in ("rmse", "ndcg@10") if k in metrics)


def step_report(ctx: Context) -> dict[str, Any]:
    evaluation = ctx.state["evaluate"]
    models = evaluation["models"]
    columns = [*bundle_mod.METRIC_KEYS, "latency_ms", "params"]
    params = {
        "teacher": ctx.state["teacher"]["params"],
        "student": ctx.state["student"]["params"],
        "student_int8": ctx.state["student"]["params"],
    }
    rows = {
        key: {
            **models[key]["metrics"],
            "latency_ms": models[key]["latency_ms"],
            "params": params[key],
        }
        for key in MODEL_KEYS
    }
    ds = ctx.dataset
    lines = [
        f"# Bundle {ctx.state['export']['version']}",
        "",
        f"Data set `{ds.name}` ({ds.feature_map.n_users} users, {ds.feature_map.n_items} "
        f"items, {len(ds.ratings)} ratings), split `{ctx.split.name}`, "
        f"{'quick' if ctx.config.quick else 'full'} configuration, seed {ctx.config.seed}.",
        f"Metrics: protocol P on the {evaluation['eval_on']} set "
        f"({len(ctx.eval_split.test)} ratings), computed with ONNX Runtime on the exported "
        "files; latency is the median time to score the whole catalogue for one user "
        "(CPU, one thread).",
        "",
        format_table(rows, columns=columns),
        "",
        f"INT8 student: {'kept' if models['student_int8']['kept'] else 'dropped'} "
        f"({models['student_int8']['reason']}).",
        "",
        "Parity (max |ONNX - PyTorch| over random valid inputs): "
        + ", ".join(
            f"{k} {v['parity_max_abs_diff']:.2e}"
            for k, v in ctx.state["export"]["models"].items()
            if "parity_max_abs_diff" in v
        ),
    ]
    if evaluation["eval_on"] != "test":
        lines += [
            "",
            "This bundle was trained on all data (`--split none`): the metrics "
            "above are in-sample and only compare the models with each other.",
        ]
    report = "\n".join(lines) + "\n"
    (ctx.work / "report.md").write_text(report, encoding="utf-8")
    student_report = _student_report(ctx)
    return {"report": "report.md", "student_report": student_report}


def _student_report(ctx: Context) -> str:
    """The student engineer's Fisher/pruning report (Markdown and plots) of this run."""
    results = {key: ctx.state.get(key) for key in ("teacher", "fisher", "student", "evaluate")}
    written = write_student_report(results, ctx.work / "student_report")
    return str(written)


def step_bundle(ctx: Context) -> dict[str, Any]:
    evaluation = ctx.state["evaluate"]["models"]
    in_sample = ctx.state["evaluate"]["eval_on"] != "test"
    exported = ctx.state["export"]["models"]
    params = {"teacher": ctx.state["teacher"]["params"], "student": ctx.state["student"]["params"]}
    params["student_int8"] = params["student"]
    artifacts: dict[str, bundle_mod.ModelArtifact] = {}
    for key in MODEL_KEYS:
        if key == "student_int8" and not evaluation[key]["kept"]:
            continue
        extra = {
            k: v
            for k, v in exported[key].items()
            if k not in ("file", "retrieval", "rating_graph", "rating_factors")
        }
        if key == "student_int8":
            extra["int8_check"] = {
                "kept": True,
                "reason": evaluation[key]["reason"],
                "against": "fp32 student",
                "on": ctx.state["evaluate"]["eval_on"],
            }
        artifacts[key] = bundle_mod.ModelArtifact(
            source=ctx.work / exported[key]["file"],
            params=int(params[key]),
            metrics={} if in_sample else evaluation[key]["metrics"],
            latency_ms=float(evaluation[key]["latency_ms"]),
            extra=extra,
            retrieval=_retrieval_files(ctx, exported[key].get("retrieval")),
            rating_graph=_rating_graph_file(ctx, exported[key].get("rating_graph")),
            rating_factors=_rating_factor_files(ctx, exported[key].get("rating_factors")),
        )
    metrics_json = {
        "eval_on": ctx.state["evaluate"]["eval_on"],
        "n_eval_ratings": len(ctx.eval_split.test),
        "models": evaluation,
    }
    contents = bundle_mod.BundleContents(
        version=ctx.state["export"]["version"],
        dataset=ctx.dataset,
        split=ctx.split.name,
        train=ctx.split.train,
        models=artifacts,
        training={
            "teacher": _plain(ctx.config.teacher_config()),
            "student": ctx.config.student_config().to_json(),
            "quick": ctx.config.quick,
            "seed": ctx.config.seed,
            "run_key": ctx.work.name,
            # Of this process group; a resumed run may have trained earlier steps with another.
            "world_size": distributed.current().world_size,
            "backend": distributed.current().backend,
        },
        report_md=(ctx.work / "report.md").read_text(encoding="utf-8"),
        metrics=metrics_json,
    )
    final = ctx.config.out_dir / contents.version
    if final.is_dir():
        bundle_mod.verify_bundle(final)
        if ctx.config.make_current:
            bundle_mod.switch_current(ctx.config.out_dir, final)
    else:
        final = bundle_mod.write_bundle(
            ctx.config.out_dir, contents, make_current=ctx.config.make_current
        )
    return {"bundle": str(final)}


def _retrieval_files(ctx: Context, state: dict[str, Any] | None) -> RetrievalFiles | None:
    if state is None:
        return None
    return RetrievalFiles(
        user_tower=ctx.work / state["user_tower"],
        items=ctx.work / state["items"],
        rows=ctx.dataset.feature_map.n_items,
        dim=int(state["dim"]),
        parity_max_abs_diff=float(state["parity_max_abs_diff"]),
        ann=None if state["ann"] is None else ctx.work / state["ann"],
        ann_info=state["ann_info"] or {},
    )


def _rating_graph_file(
    ctx: Context, state: dict[str, Any] | None
) -> bundle_mod.RatingGraphFile | None:
    # None for an export step recorded before rating graphs existed (a resumed run).
    if state is None:
        return None
    return bundle_mod.RatingGraphFile(
        path=ctx.work / state["file"], parity_max_abs_diff=float(state["parity_max_abs_diff"])
    )


def _rating_factor_files(
    ctx: Context, state: dict[str, Any] | None
) -> bundle_mod.RatingFactorFiles | None:
    # None for a model without a separable rating head, or an export step recorded before
    # rating factors existed (a resumed run).
    if state is None:
        return None
    fm = ctx.dataset.feature_map
    return bundle_mod.RatingFactorFiles(
        users=ctx.work / state["users"],
        items=ctx.work / state["items"],
        n_users=fm.n_users,
        n_items=fm.n_items,
        dim=int(state["dim"]),
        offset=float(state["offset"]),
        parity_max_abs_diff=float(state["parity_max_abs_diff"]),
    )


def _need(model: TwoHeadModel | None, what: str) -> TwoHeadModel:
    if model is None:
        raise PipelineError(f"the {what} model is not available; run its step first")
    return model


StepFn = Callable[[Context], dict[str, Any]]
_STEP_FNS: dict[str, StepFn] = {
    "teacher": step_teacher,
    "fisher": step_fisher,
    "student": step_student,
    "export": step_export,
    "evaluate": step_evaluate,
    "report": step_report,
    "bundle": step_bundle,
}


# ---------------------------------------------------------------- driver


def prepare(config: PipelineConfig) -> Context:
    """The data step: loads the data set and split and finds the run's work folder."""
    torch.set_num_threads(config.step_threads())
    distributed.init_from_env(resolve_device(config.device))
    dataset = load_dataset(config.data_dir, dataset=config.dataset, cache_dir=config.cache_dir)
    split = make_split(dataset, split=config.split, data_dir=config.data_dir, seed=config.seed)
    if len(split.train) == 0:
        raise PipelineError(f"split {config.split} leaves no training ratings")
    eval_split, eval_on = _eval_split(split, seed=config.seed)
    work = Path(config.out_dir) / ".work" / run_key(config, dataset)
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(config=config, dataset=dataset, split=split, eval_split=eval_split, work=work)
    ctx.state["eval_on"] = eval_on
    ctx.state["data"] = {
        "fingerprint": dataset.fingerprint,
        "n_train": len(split.train),
        "n_test": len(split.test),
    }
    return ctx


# What a step's saved state must hold for the steps after it to use it: key -> the type of
# its value, a nested shape, or _FILE (a name of a file in the work folder). Only the keys
# later steps read are listed, so states written by older code still load.
_FILE = "a file in the work folder"
_STATE_SHAPES: dict[str, dict[str, Any]] = {
    "teacher": {"params": int},
    "fisher": {"report": dict},
    "student": {"params": int},
    "export": {"version": str, "models": {key: {"file": _FILE} for key in MODEL_KEYS}},
    "evaluate": {
        "eval_on": str,
        "models": {
            **{key: {"metrics": dict, "latency_ms": int | float} for key in MODEL_KEYS},
            "student_int8": {
                "metrics": dict,
                "latency_ms": int | float,
                "kept": bool,
                "reason": str,
            },
        },
    },
    "report": {"report": _FILE},
}
# The key of a step's JSON file that records the sha256 of every file the step wrote, so a
# file truncated or changed since is noticed. Kept out of `Context.state`, so later steps
# (the student report renders whole states) see what the step returned.
OUTPUTS_KEY = "outputs_sha256"


class _StateError(Exception):
    """A step's saved state cannot be reused; the message names the file and why."""


def _file_stats(work: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, size, mtime) of every file under `work`, by its path relative to `work`.

    The inode tells a file replaced by rename (atomic writes) from the old one even when
    both carry the same mtime, which the file system keeps only to a clock tick.
    """
    stats: dict[str, tuple[int, int, int]] = {}
    for path in work.rglob("*"):
        if path.is_file():
            st = path.stat()
            stats[path.relative_to(work).as_posix()] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return stats


def _written_since(work: Path, before: dict[str, tuple[int, int, int]]) -> dict[str, str]:
    """sha256 of each file under `work` that is new or rewritten since `before`."""
    after = _file_stats(work)
    return {
        name: sha256_file(work / name)
        for name, stat in sorted(after.items())
        if before.get(name) != stat
    }


def _check_shape(value: Any, shape: dict[str, Any], where: str, work: Path) -> None:
    """`value` holds what `shape` (see _STATE_SHAPES) lists; `where` names it in errors."""
    if not isinstance(value, dict):
        raise _StateError(f"{where} is a JSON {type(value).__name__}, not an object")
    for key, want in shape.items():
        here = f"{where}[{key!r}]"
        if key not in value:
            raise _StateError(f"{where} has no {key!r}")
        item = value[key]
        if isinstance(want, dict):
            _check_shape(item, want, here, work)
        elif want is _FILE:
            if not isinstance(item, str) or not (work / item).is_file():
                raise _StateError(f"{here} names {item!r}, which is not a file in {work}")
        elif not isinstance(item, want):
            expected = getattr(want, "__name__", str(want))
            raise _StateError(f"{here} is a {type(item).__name__}, not {expected}")


def _check_outputs(work: Path, outputs: Any, where: str) -> None:
    """Every file the step wrote is still there, byte for byte."""
    if outputs is None:
        return  # written before steps recorded their files: nothing to compare
    if not isinstance(outputs, dict):
        raise _StateError(f"{where}[{OUTPUTS_KEY!r}] is not an object")
    for name, digest in outputs.items():
        path = work / name
        try:
            if sha256_file(path) != digest:
                raise _StateError(f"{path} is not the file its step wrote (truncated or changed)")
        except OSError as err:
            raise _StateError(f"{path} cannot be read: {err}") from err


def _saved_state(work: Path, step: str) -> tuple[dict[str, Any], Any]:
    """The step's saved state and the record of its files, if both can be reused."""
    path = work / f"{step}.json"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise _StateError(f"{path}: {err}") from err
    _check_shape(state, _STATE_SHAPES.get(step, {}), str(path), work)
    return state, state.pop(OUTPUTS_KEY, None)


def _load_state(ctx: Context, step: str) -> bool:
    """Whether `step` finished earlier and left what the later steps need (now in `ctx`).

    A damaged state (unreadable JSON, missing keys, a file gone or changed since) is
    logged and the step runs again, as does every step after it.
    """
    done = ctx.work / f"{step}.json"
    if not done.is_file():
        return False
    try:
        state, outputs = _saved_state(ctx.work, step)
        model = _saved_model(ctx, step)
        _check_outputs(ctx.work, outputs, str(done))
    except (checkpoint.CheckpointError, FileNotFoundError) as err:
        log.warning("%s: checkpoint not reused (%s); running the step again", step, err)
        return False
    except _StateError as err:
        log.warning("%s: saved state not reused (%s); running the step again", step, err)
        return False
    ctx.state[step] = state
    if step == "teacher":
        ctx.teacher = model
    elif step == "student":
        ctx.student = model
    elif step == "export" and state.get("export_code") != checkpoint.export_code_version():
        log.info("export: the export code changed since; exporting again")
        return False
    return True


def _saved_model(ctx: Context, step: str) -> TwoHeadModel | None:
    """The model a training step checkpointed; None for the other steps."""
    if step not in ("teacher", "student"):
        return None
    return checkpoint.load_model(
        ctx.work / f"{step}.pt",
        fm=ctx.dataset.feature_map,
        kind="ensemble" if step == "teacher" else "student",
    )


def run_pipeline(config: PipelineConfig, *, until: str = "bundle") -> Context:
    """Runs the steps up to and including `until`, skipping those already checkpointed."""
    if until not in STEPS:
        raise PipelineError(f"unknown step {until!r}; steps are {', '.join(STEPS)}")
    started = time.perf_counter()
    ctx = prepare(config)
    log.info("[1/%d] data: %s (work dir %s)", len(STEPS), ctx.state["data"], ctx.work)
    last = STEPS.index(until)
    world = distributed.current()
    rerun = False  # once a step runs, every later step depends on its new output
    for number, step in enumerate(STEPS[1 : last + 1], start=2):
        # Every rank decides on the same files: rank 0 has written what it finished.
        distributed.barrier(world)
        # The bundle step always runs: it re-verifies an already published bundle.
        if not rerun and step != "bundle" and _load_state(ctx, step):
            log.info("[%d/%d] %s: done earlier, skipped", number, len(STEPS), step)
            continue
        rerun = True
        if not world.is_main and step not in DISTRIBUTED_STEPS:
            continue  # only rank 0 measures, exports and publishes
        t0 = time.perf_counter()
        log.info("[%d/%d] %s ...", number, len(STEPS), step)
        before = _file_stats(ctx.work) if world.is_main else {}
        ctx.state[step] = _STEP_FNS[step](ctx)
        if world.is_main:
            written = {OUTPUTS_KEY: _written_since(ctx.work, before)}
            _write_json_atomic(ctx.work / f"{step}.json", {**ctx.state[step], **written})
        log.info("[%d/%d] %s: %.1f s", number, len(STEPS), step, time.perf_counter() - t0)
    distributed.barrier(world)
    log.info("pipeline finished in %.1f s", time.perf_counter() - started)
    return ctx


def bundle_path(ctx: Context) -> Path:
    return Path(ctx.state["bundle"]["bundle"])
