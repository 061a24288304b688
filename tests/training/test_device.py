"""`--device`: auto picks CUDA when present; CPU and CUDA give the same model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datagen import write_ml100k
from tests.training.test_distill import quick_teacher
from training import distill
from training.data import load_dataset, make_split
from training.device import DeviceError, indexed, model_device, reproducible, resolve_device
from training.distill_config import StudentConfig
from training.models.base import count_params
from training.train import MFConfig, TeacherConfig, train_component, train_teacher


def test_auto_picks_cuda_only_when_present() -> None:
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want
    assert resolve_device("cpu") == torch.device("cpu")


def test_deterministic_kernels_only_where_threads_race_and_only_inside() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with reproducible(torch.device("cpu")):
            assert torch.are_deterministic_algorithms_enabled()
        assert not torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)  # one thread is deterministic: its kernels stay
        with reproducible(torch.device("cpu")):
            assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(threads)


def test_a_device_is_named_as_its_tensors_report_it() -> None:
    assert indexed(torch.device("cpu")) == torch.device("cpu")
    assert indexed(torch.device("cuda", 1)) == torch.device("cuda", 1)
    if torch.cuda.is_available():
        # The bare name differs from the cuda:0 its tensors report.
        assert resolve_device("cuda") == torch.zeros(1, device="cuda").device


def test_unknown_or_missing_devices_are_user_errors() -> None:
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no CUDA device"):
            resolve_device("cuda")


def _train(tmp_path: Path, device: str) -> tuple[torch.nn.Module, dict]:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    config = MFConfig(
        epochs=2, dim=8, score_dim=8, batch_size=64, n_negatives=16, exact_softmax_items=0
    )
    return train_component(
        "mf",
        ds.feature_map,
        ds.tables,
        split.train,
        config=config,
        valid=split.test,
        seed=3,
        progress=False,
        device=device,
    )


def test_cpu_training_is_the_default_training(tmp_path: Path) -> None:
    model, info = _train(tmp_path, "cpu")
    assert model_device(model).type == "cpu"
    again, info_again = _train(tmp_path, "cpu")
    assert info["curves"] == info_again["curves"]
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_matches_cpu_up_to_numerical_noise(tmp_path: Path) -> None:
    cpu, cpu_info = _train(tmp_path, "cpu")
    gpu, gpu_info = _train(tmp_path, "cuda")
    assert model_device(gpu).type == "cuda"
    for a, b in zip(cpu.state_dict().values(), gpu.state_dict().values(), strict=True):
        np.testing.assert_allclose(a.numpy(), b.cpu().numpy(), rtol=1e-3, atol=1e-4)
    assert cpu_info["head_epochs"] == gpu_info["head_epochs"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_student_distils_on_cuda_as_on_the_cpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=60, n_items=80, n_ratings=3000))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    built: list[str] = []
    make = distill.Distillation._optimizer

    def counted(self: distill.Distillation) -> object:
        built.append(self.device.type)
        return make(self)

    monkeypatch.setattr(distill.Distillation, "_optimizer", counted)
    runs = {}
    for device in ("cpu", "cuda"):
        cfg = StudentConfig(quick=True, progress=False, prune_ratio=0.5, device=device)
        runs[device] = distill.distill_student(ds, split.train, teacher, config=cfg)
    (cpu, cpu_info), (gpu, gpu_info) = runs["cpu"], runs["cuda"]
    assert model_device(gpu).type == "cpu"  # export and evaluation read a CPU model
    assert count_params(gpu) == count_params(cpu)
    assert len(gpu_info["prune_steps"]) == len(cpu_info["prune_steps"])
    # Every move rebuilds the optimiser: to the GPU at the start, to the CPU for each
    # epoch's pruning (and back, as on the CPU) and to the CPU at the end. Any other
    # rebuild (one per epoch, when "cuda" and the "cuda:0" of the parameters differed)
    # throws away Adam's moments where the CPU run keeps them.
    prune_epochs = len({step["epoch"] for step in gpu_info["prune_steps"]})
    assert built.count("cuda") == built.count("cpu") + 2 + prune_epochs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_component_processes_on_one_gpu_train_the_teacher_of_one_process(
    tmp_path: Path,
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=60, n_items=80, n_ratings=3000))
    train = make_split(ds, split="u1").train
    config = replace(
        TeacherConfig(progress=False, threads=1, seed=3, device="cuda").quick(), refit_full=True
    )
    one, one_report = train_teacher(ds, train, config=replace(config, jobs=1))
    three, three_report = train_teacher(ds, train, config=replace(config, jobs=3))
    a, b = one.state_dict(), three.state_dict()
    assert a.keys() == b.keys()
    for key in a:  # CUDA's atomic adds sum in no fixed order: noise, not bits
        np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-3, atol=1e-4)
    for name, info in one_report["components"].items():
        assert three_report["components"][name]["head_epochs"] == info["head_epochs"]
