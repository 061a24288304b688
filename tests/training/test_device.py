"""`--device`: auto picks CUDA when present; CPU and CUDA give the same model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.datagen import write_ml100k
from training.data import load_dataset, make_split
from training.device import DeviceError, model_device, reproducible, resolve_device
from training.train import MFConfig, train_component


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
