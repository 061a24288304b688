"""Teacher training on large catalogues: sparse embedding gradients with a lazy Adam."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.datagen import write_ml100k
from training import train
from training.data import load_dataset, make_split
from training.models.layers import UserHistory
from training.sparse import LazyAdam
from training.train import MFConfig, XDeepFMConfig, make_optimizer, sparsify_embeddings


def test_large_tables_become_sparse_and_get_lazy_adam(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    config = MFConfig(dim=4, score_dim=4)
    model = train.build_component("mf", ds.feature_map, config, global_mean=3.5)
    assert isinstance(make_optimizer(model, config), torch.optim.Adam)  # small: dense
    # The item-sized tables and the shared field tables; not the 31-row user table.
    assert sparsify_embeddings(model, min_rows=41) == 4
    assert model.item_rank.sparse and not model.user_rank.sparse
    opt = make_optimizer(model, config)
    assert isinstance(opt, train.Optimizers)
    kinds = [type(part) for part in opt.parts]
    assert kinds == [torch.optim.Adam, LazyAdam]
    n_params = sum(len(g["params"]) for part in opt.parts for g in part.param_groups)
    assert n_params == len(list(model.parameters()))


def test_histories_are_sampled_where_their_tables_are_sparse_unless_told(tmp_path: Path) -> None:
    assert train.history_sample(MFConfig(), sparse=True) == train.AUTO_HISTORY_SAMPLE
    assert train.history_sample(MFConfig(), sparse=False) == 0
    assert train.history_sample(MFConfig(history_sample=0), sparse=True) == 0
    assert train.history_sample(XDeepFMConfig(history_sample=16), sparse=False) == 16
    with pytest.raises(ValueError, match="history_sample"):
        train.history_sample(MFConfig(history_sample=-1), sparse=True)
    # A small catalogue (ml-100k, ML-1M) sums whole histories, as it always did.
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    data = train.TrainData.build(ds.ratings, ds.tables, ds.feature_map, device="cpu")
    model = train.training_model("mf", ds.feature_map, MFConfig(), data, global_mean=3.5)
    histories = [m for m in model.modules() if isinstance(m, UserHistory)]
    assert histories and all(m.sample == 0 for m in histories)


@pytest.mark.parametrize("name", ["mf", "xdeepfm"])
def test_components_train_with_sparse_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    monkeypatch.setattr(train, "SPARSE_MIN_ROWS", 40)  # these tables count as large
    monkeypatch.setattr(train, "AUTO_HISTORY_SAMPLE", 4)  # and these histories as long
    config = (
        # Adam's rating head, so that its sparse factor tables train too.
        MFConfig(
            epochs=3,
            dim=4,
            score_dim=4,
            batch_size=64,
            n_negatives=16,
            exact_softmax_items=0,
            bayes_rating=False,
        )
        if name == "mf"
        else XDeepFMConfig(
            epochs=3, dim=4, cin_layers=(4,), dnn_layers=(8,), tower_layers=(8,), batch_size=64
        )
    )
    sparse_at_step: list[bool] = []
    samples: set[int] = set()
    original = train.train_step

    def spy(t: train.Trainer, idx: torch.Tensor) -> tuple[float, float, float]:
        sparse_at_step.append(
            any(isinstance(m, nn.Embedding) and m.sparse for m in t.model.modules())
        )
        samples.update(m.sample for m in t.model.modules() if isinstance(m, UserHistory))
        return original(t, idx)

    monkeypatch.setattr(train, "train_step", spy)
    model, info = train.train_component(
        name, ds.feature_map, ds.tables, split.train, config=config, seed=0, progress=False
    )
    assert sparse_at_step and all(sparse_at_step)
    assert samples == {4}  # every history term trained on at most 4 items per user and step
    # The trained model is an ordinary dense one again: Fisher takes per-example gradients.
    assert not any(isinstance(m, nn.Embedding) and m.sparse for m in model.modules())
    batch = {"user": torch.tensor([1, 2]), "item": torch.tensor([3, 4])}
    feats = ds.tables
    out = model(
        batch["user"],
        batch["item"],
        torch.as_tensor(feats.user_feats[[1, 2]]),
        torch.as_tensor(feats.item_feats[[3, 4]]),
        torch.as_tensor(feats.item_genres[[3, 4]]),
    )[0].sum()
    out.backward()
    assert all(p.grad is None or not p.grad.is_sparse for p in model.parameters())
    losses = [point["loss"] for point in info["curves"]]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def test_distillation_prunes_and_trains_with_sparse_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.training.test_distill import quick_teacher  # noqa: PLC0415
    from training import distill, distill_config  # noqa: PLC0415
    from training.distill import distill_student  # noqa: PLC0415
    from training.distill_config import StudentConfig  # noqa: PLC0415

    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    # This catalogue counts as large: list-scope distillation, sparse item tables.
    monkeypatch.setattr(distill_config, "KD_CATALOGUE_CELLS", 10)
    monkeypatch.setattr(distill, "SPARSE_MIN_ROWS", 30)
    seen: list[bool] = []
    original = distill.make_adam

    def spy(params, *, sparse):  # type: ignore[no-untyped-def]
        seen.append(bool(sparse))
        return original(params, sparse=sparse)

    monkeypatch.setattr(distill, "make_adam", spy)
    cfg = StudentConfig(quick=True, progress=False, prune_ratio=0.5)
    _, info = distill_student(ds, split.train, quick_teacher(ds), config=cfg)
    assert info["ranking_kd_scope"] == "list"
    assert len(seen) >= 3 and all(seen)  # the first optimiser and one after each pruning
    assert all(torch.isfinite(torch.tensor(info["curves"]["total"])))
    assert info["params"] < info["initial_params"]
