"""Distillation losses, list sampling, schedules and the projection bookkeeping."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from tests.datagen import write_ml100k
from tests.training.test_fisher import lists, tiny_student
from tests.training.test_student import feature_map
from training import distill, kd_targets
from training.data import Dataset, load_dataset, make_split
from training.distill import distill_student
from training.distill_config import StudentConfig
from training.kd_targets import (
    CatalogueTargets,
    annotate,
    item_tower_table,
    score_teacher,
    teacher_pools,
)
from training.losses import (
    DistillLoss,
    catalogue_ranking_kd,
    catalogue_score_kd,
    feature_kd,
    ranking_kd,
    ranking_loss,
    rating_kd,
    rating_loss,
    topk_ranking_kd,
)
from training.models.base import count_params
from training.models.ensemble import EnsembleTeacher
from training.models.student import StudentShape, shape_params
from training.prune_schedule import (
    finetune_lr_scale,
    initial_shape,
    prune_schedule,
    step_target,
)
from training.sampling import ListSampler
from training.sparse import make_adam, sparse_ids
from training.train import TeacherConfig, build_component


def test_each_distillation_loss_is_zero_when_student_equals_teacher() -> None:
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, 7, generator=g) * 4 + 1
    s = torch.randn(5, 7, generator=g) * 3
    f = torch.randn(5, 7, 6, generator=g)
    torch.testing.assert_close(rating_kd(r, r), torch.zeros(5))
    torch.testing.assert_close(ranking_kd(s, s, temperature=2.0), torch.zeros(5))
    torch.testing.assert_close(feature_kd(f, f, scale=3.0), torch.zeros(5))
    # ... and positive otherwise; ranking KD ignores a per-list shift of the scores.
    assert bool((rating_kd(r + 0.1, r) > 0).all())
    assert bool((ranking_kd(s.flip(-1), s, temperature=2.0) > 0).all())
    torch.testing.assert_close(
        ranking_kd(s + 4.0, s, temperature=2.0), torch.zeros(5), atol=1e-5, rtol=0
    )
    assert bool((feature_kd(f * 0.5, f) > 0).all())


def _catalogue(rows: int, items: int, share: float, always: int) -> tuple[Tensor, ...]:
    """Random student scores (with gradients), teacher scores and a rankable mask whose
    first `always` items every row can rank."""
    g = torch.Generator().manual_seed(0)
    s = torch.randn(rows, items, generator=g, requires_grad=True)
    t = torch.randn(rows, items, generator=g)
    rankable = torch.rand(rows, items, generator=g) < share
    rankable[:, :always] = True
    return s, t, rankable


def test_catalogue_ranking_kd_sees_only_rankable_items() -> None:
    s, t, rankable = _catalogue(4, 9, 0.6, 1)
    got = catalogue_ranking_kd(s, t, rankable, temperature=0.7)
    for row in range(4):
        keep = rankable[row]
        want = ranking_kd(s[row, keep], t[row, keep], temperature=0.7)
        torch.testing.assert_close(got[row], want)
    # Hidden items neither count nor receive gradient (and no NaN comes from hiding them).
    moved = torch.where(rankable, s, s + 100.0)
    torch.testing.assert_close(catalogue_ranking_kd(moved, t, rankable, temperature=0.7), got)
    got.sum().backward()
    assert s.grad is not None and bool(torch.isfinite(s.grad).all())
    assert bool((s.grad[~rankable] == 0).all())
    torch.testing.assert_close(
        catalogue_ranking_kd(t, t, rankable, temperature=0.7), torch.zeros(4), atol=1e-6, rtol=0
    )


def test_catalogue_score_kd_is_the_centred_squared_error_over_rankable_items() -> None:
    s, t, rankable = _catalogue(3, 7, 0.7, 2)
    got = catalogue_score_kd(s, t, rankable)
    for row in range(3):
        d = (s[row] - t[row])[rankable[row]]
        torch.testing.assert_close(got[row], (d - d.mean()).pow(2).mean())
    # A per-row shift changes no ranking and no loss; hidden items neither count nor learn.
    shifted = torch.where(rankable, t + torch.arange(3.0)[:, None], t - 50.0)
    torch.testing.assert_close(
        catalogue_score_kd(shifted, t, rankable), torch.zeros(3), atol=1e-5, rtol=0
    )
    got.sum().backward()
    assert s.grad is not None and bool((s.grad[~rankable] == 0).all())


def _plackett_luce_top(s: list[float], t: list[float], k: int) -> float:
    """The definition, item by item: -log P(teacher's top k, in order, before the rest)."""
    order = sorted(range(len(t)), key=lambda j: -t[j])
    left = set(range(len(s)))
    nll = 0.0
    for j in order[:k]:
        nll += float(np.log(sum(np.exp(s[i]) for i in left)) - s[j])
        left.remove(j)
    return nll / min(k, len(s))


def test_topk_ranking_kd_is_the_plackett_luce_likelihood_of_the_teachers_top() -> None:
    s, t, rankable = _catalogue(4, 12, 0.7, 5)
    got = topk_ranking_kd(s, t, rankable, k=4)
    for row in range(4):
        keep = rankable[row]
        want = _plackett_luce_top(s[row, keep].tolist(), t[row, keep].tolist(), 4)
        assert abs(float(got[row]) - want) < 1e-4
    # Unrankable items neither count nor get gradient; the order below the top is free.
    got.sum().backward()
    assert s.grad is not None and bool((s.grad[~rankable] == 0).all())
    masked = torch.where(rankable, t, torch.tensor(-1e4))
    in_top = masked >= masked.topk(4, dim=-1).values[:, -1:]
    below = torch.where(
        in_top, t, t.min() - 1.0 - torch.rand(4, 12, generator=torch.Generator().manual_seed(1))
    )
    torch.testing.assert_close(topk_ranking_kd(s, below, rankable, k=4), got)
    # A student far more confident in the teacher's order approaches zero loss; the
    # reverse order costs more.
    sharp = topk_ranking_kd(t * 500, t, torch.ones_like(rankable), k=4)
    assert float(sharp.max()) < 1e-3
    assert bool((topk_ranking_kd(-t, t, rankable, k=4) > got.detach()).all())
    # Fewer rankable items than k: the unrankable ones enter no term, however scored.
    few = torch.zeros_like(rankable)
    few[:, :3] = True
    short = topk_ranking_kd(s.detach(), t, few, k=5)
    for row in range(4):
        want = _plackett_luce_top(s[row, :3].tolist(), t[row, :3].tolist(), 5)
        assert abs(float(short[row]) - want) < 1e-4
    torch.testing.assert_close(
        topk_ranking_kd(torch.where(few, s, s + 50.0).detach(), t, few, k=5), short
    )


def test_catalogue_targets_are_the_teacher_scores_over_unrated_items(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=20, n_items=30, n_ratings=300))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    targets = CatalogueTargets(teacher, ds.tables, split.train)
    users = np.unique(split.train.user)[:7]
    scores, rankable = targets(torch.as_tensor(users), torch.as_tensor(ds.tables.user_feats[users]))
    want = teacher.score_matrix(users, ds.tables).detach()
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-5)
    rated = {(int(u), int(i)) for u, i in zip(split.train.user, split.train.item, strict=True)}
    for row, u in enumerate(users):
        assert not rankable[row, 0]
        for i in range(1, scores.shape[1]):
            assert bool(rankable[row, i]) == ((int(u), i) not in rated)


def test_distill_objective_is_zero_on_kd_terms_for_the_teacher_itself() -> None:
    teacher = tiny_student(0)
    ex = annotate(teacher, lists(6, 5))
    k = teacher.shape.rating_factor + teacher.shape.score_factor
    loss = DistillLoss(StudentConfig(), student_repr=k, teacher_repr=k)
    with torch.no_grad():
        loss.proj.weight.copy_(torch.eye(k))
        loss.proj.bias.zero_()
    # The student is the teacher (rating clipped the same way as the teacher's targets).
    parts = loss.components(
        lambda *a: {**teacher.heads(*a), "rating": teacher.heads(*a)["rating"].clamp(1, 5)}, ex
    )
    for name in ("rating_kd", "ranking_kd", "feature_kd"):
        torch.testing.assert_close(parts[name], torch.zeros(6), atol=1e-6, rtol=0)
    assert bool((parts["gt_rating"] >= 0).all())


def test_ground_truth_losses() -> None:
    pred = torch.tensor([[3.0, 4.0, 1.0]])
    rating = torch.tensor([[4.0, 4.0, 0.0]])
    rated = torch.tensor([[True, True, False]])
    torch.testing.assert_close(rating_loss(pred, rating, rated), torch.tensor([0.5]))
    score = torch.tensor([[2.0, 0.0, 0.0]])
    want = -(torch.log_softmax(score, -1)[0, 0] + torch.log_softmax(score, -1)[0, 1]) / 2
    torch.testing.assert_close(ranking_loss(score, rating, rated), want.reshape(1))
    # No liked item: no ranking signal rather than NaN.
    none = ranking_loss(score, torch.tensor([[2.0, 3.0, 0.0]]), rated)
    torch.testing.assert_close(none, torch.zeros(1))


def test_list_sampler_draws_rated_positives_and_unseen_negatives(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d"))
    split = make_split(ds, split="u1")
    sampler = ListSampler(ds.feature_map, ds.tables, split.train, positives=4, negatives=6, seed=0)
    arrays = sampler.epoch_lists()
    train_pairs = {
        (int(u), int(i)): float(r)
        for u, i, r in zip(split.train.user, split.train.item, split.train.rating, strict=True)
    }
    assert arrays["item"].shape[1] == 10
    for row in range(arrays["item"].shape[0]):
        u = int(arrays["user"][row, 0])
        assert (arrays["user"][row] == u).all()
        for j in range(4):
            assert train_pairs[(u, int(arrays["item"][row, j]))] == arrays["rating"][row, j]
        assert arrays["rated"][row, :4].all() and not arrays["rated"][row, 4:].any()
    negatives = [
        (int(u), int(i))
        for u, i in zip(arrays["user"][:, 4:].ravel(), arrays["item"][:, 4:].ravel(), strict=True)
    ]
    clash = np.mean([p in train_pairs for p in negatives])
    assert clash < 0.01  # redrawn until (almost) none is a rated item
    counts = np.bincount(split.train.user)
    assert arrays["item"].shape[0] == int(np.ceil(counts[counts > 0] / 4).sum())
    ex = sampler.tensors(arrays)
    assert ex["item_genres"].shape == (*arrays["item"].shape, ds.feature_map.n_genres)


def test_finetune_lr_falls_on_a_cosine_over_the_finetune_epochs_only() -> None:
    cfg = StudentConfig(epochs=10, finetune_epochs=4, finetune_lr_end=0.1)
    assert [finetune_lr_scale(cfg, e, 0.5) for e in range(6)] == [1.0] * 6
    assert finetune_lr_scale(cfg, 6, 0.0) == pytest.approx(1.0)
    assert finetune_lr_scale(cfg, 8, 0.0) == pytest.approx(0.55)  # half way: the mean
    assert finetune_lr_scale(cfg, 9, 1.0) == pytest.approx(0.1)
    path = [finetune_lr_scale(cfg, e, f) for e in range(6, 10) for f in (0.0, 0.25, 0.5, 0.75)]
    assert path == sorted(path, reverse=True) and min(path) > 0.1
    assert finetune_lr_scale(replace(cfg, finetune_lr_end=1.0), 9, 0.9) == 1.0
    with pytest.raises(ValueError, match="finetune_lr_end"):
        replace(cfg, finetune_lr_end=1.5).effective()


def test_schedule_and_initial_size() -> None:
    cfg = StudentConfig(epochs=14, prune_start=2, prune_steps=6, finetune_epochs=4)
    sched = prune_schedule(cfg)
    assert len(sched) == 6 and sched[0] == 1 and sched[-1] == 9
    assert sched == sorted(sched)
    assert prune_schedule(replace(cfg, prune=False)) == []
    fm = feature_map()
    shape = initial_shape(fm, cfg, 50_000)
    assert 0.8 * 50_000 < shape_params(fm, shape) <= 50_000
    fixed = StudentShape(
        user_score_dim=3,
        user_rating_dim=2,
        item_score_dim=3,
        item_rating_dim=2,
        user_hidden=3,
        item_hidden=3,
        rating_factor=2,
        score_factor=2,
    )
    assert initial_shape(fm, replace(cfg, initial="shape", shape=fixed), 50_000) == fixed


def test_the_score_and_rating_heads_never_grow_past_their_caps() -> None:
    fm = feature_map()
    cfg = StudentConfig(max_score_factor=8, max_rating_factor=5)
    big = initial_shape(fm, cfg, 5_000_000)  # every other width scales far up
    assert big.score_factor == 8 and big.rating_factor == 5
    assert big.user_hidden > StudentShape().user_hidden
    assert 0.8 * 5_000_000 < shape_params(fm, big) <= 5_000_000
    small = initial_shape(
        fm, replace(cfg, max_score_factor=1000, max_rating_factor=1000), 5_000_000
    )
    assert small.score_factor > 8 and small.rating_factor > 5


def test_step_targets_shrink_geometrically_to_the_final_target() -> None:
    targets = [step_target(10_000, 1_000, s, 4) for s in range(1, 5)]
    assert targets[-1] == 1_000
    assert targets == sorted(targets, reverse=True)
    ratios = [b / a for a, b in zip([10_000, *targets], targets, strict=False)]
    assert max(ratios) - min(ratios) < 1e-3
    # A student already below the target is never asked to grow.
    assert step_target(500, 1_000, 1, 2) == 1_000


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="prune_ratio"):
        StudentConfig(prune_ratio=1.0).effective()
    with pytest.raises(ValueError, match="temperature"):
        StudentConfig(temperature=0.0).effective()
    with pytest.raises(ValueError, match="non-negative"):
        StudentConfig(w_rating_kd=-1.0).effective()


@pytest.mark.parametrize("method", ["magnitude", "random"])
def test_distillation_runs_with_every_pruning_method(tmp_path: Path, method: str) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    teacher = tiny_student(1)  # any TwoHeadModel with a 'repr' output can teach
    teacher = type(teacher)(ds.feature_map, shape=teacher.shape)
    cfg = StudentConfig(quick=True, progress=False, method=method, prune_ratio=0.5)  # type: ignore[arg-type]
    student, info = distill_student(ds, split.train, teacher, config=cfg)
    assert count_params(student) <= 0.5 * count_params(teacher) + 1
    assert info["config"]["method"] == method
    assert len(info["prune_steps"]) == 2


def test_score_kd_and_the_finetune_decay_take_part_in_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    teacher = tiny_student(1)
    teacher = type(teacher)(ds.feature_map, shape=teacher.shape)
    cfg = StudentConfig(quick=True, progress=False, w_score_kd=1.0, finetune_lr_end=0.0)
    rates: list[float] = []
    set_lr = distill.Distillation._set_lr

    def record(run: distill.Distillation, scale: float) -> None:
        set_lr(run, scale)
        groups = run.opt.param_groups  # type: ignore[union-attr]
        rates.append(groups[0]["lr"] / run.lr)

    monkeypatch.setattr(distill.Distillation, "_set_lr", record)
    _, info = distill_student(ds, split.train, teacher, config=cfg)
    losses = info["curves"]["score_kd"]
    assert len(losses) == cfg.effective().epochs and all(np.isfinite(losses))
    # Constant until the fine-tune, then falling towards 0 within its epochs.
    assert rates[0] == 1.0 and rates == sorted(rates, reverse=True) and rates[-1] < 0.2


def test_a_student_distilled_twice_on_two_threads_is_the_same(tmp_path: Path) -> None:
    # Two threads accumulate indexed gradients in a timing-dependent order unless the
    # kernels are the deterministic ones (training.device.reproducible): without them
    # these two runs differed.
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=60, n_items=80, n_ratings=3000))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    cfg = StudentConfig(quick=True, progress=False, threads=2, prune_ratio=0.5)
    threads = torch.get_num_threads()
    try:
        runs = [distill_student(ds, split.train, teacher, config=cfg) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    (first, first_info), (second, second_info) = runs
    assert first_info["prune_steps"] == second_info["prune_steps"]
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key


def quick_teacher(ds: Dataset) -> EnsembleTeacher:
    """An untrained ensemble of quick-sized components: real shapes, random weights."""
    quick = TeacherConfig().quick()
    torch.manual_seed(0)
    return EnsembleTeacher(
        *[
            build_component(name, ds.feature_map, getattr(quick, name), global_mean=3.5)
            for name in ("mf", "xdeepfm", "autoint")
        ]
    ).eval()


def test_tower_scores_of_the_teacher_match_its_heads(tmp_path: Path) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=20, n_items=30, n_ratings=300))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    sampler = ListSampler(ds.feature_map, ds.tables, split.train, positives=3, negatives=5, seed=1)
    ex = sampler.tensors(sampler.epoch_lists())
    full = annotate(teacher, ex)
    part = annotate(teacher, ex, kd_items=4, item_vectors=item_tower_table(teacher, ds.tables))
    torch.testing.assert_close(part["t_score"], full["t_score"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(part["t_rating"], full["t_rating"][:, :4])
    torch.testing.assert_close(part["t_repr"], full["t_repr"][:, :4])
    assert full["t_rating"].shape == ex["item"].shape


def test_a_teacher_pool_batch_is_the_annotated_lists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=20, n_items=30, n_ratings=300))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    monkeypatch.setattr(kd_targets, "POOL_CHUNK", 7)  # several chunks, a short last one
    cfg = StudentConfig(list_positives=3, list_negatives=5, kd_items=4, teacher_pools=2, seed=1)
    pools = teacher_pools(ds, split.train, teacher, config=cfg)
    # The same draws, annotated as whole examples the way pools were before they were compact.
    sampler = ListSampler(ds.feature_map, ds.tables, split.train, positives=3, negatives=5, seed=1)
    for pool in pools:
        full = annotate(teacher, sampler.tensors(sampler.epoch_lists()), kd_items=4)
        assert len(pool) == full["user"].shape[0] > 2 * kd_targets.POOL_CHUNK
        idx = torch.tensor([len(pool) - 1, 0, 9, 3])
        got = pool.batch(idx)
        assert got.keys() == full.keys()
        for key, want in full.items():
            assert got[key].dtype == want.dtype, key
            # float16 storage of the representations: about three significant digits
            tol = 2e-3 if key == "t_repr" else 1e-5
            torch.testing.assert_close(got[key], want[idx], rtol=tol, atol=tol)
        assert pool.repr_dim == full["t_repr"].shape[-1]
        assert pool.repr_scale == pytest.approx(float(full["t_repr"].pow(2).mean()), rel=1e-5)


def test_a_mirroring_student_distils_the_tower_score_and_ranks_with_its_rating(
    tmp_path: Path,
) -> None:
    ds = load_dataset(write_ml100k(tmp_path / "d", n_users=30, n_items=40, n_ratings=600))
    split = make_split(ds, split="u1")
    teacher = quick_teacher(ds)
    teacher.standardise(np.arange(1, 31), ds.tables)
    teacher.rating_score_weight.fill_(0.3)
    mirror = StudentConfig(
        quick=True, progress=False, prune_ratio=0.5, score_rating="mirror", hold_score_path=False
    )
    towers_only = score_teacher(teacher, mirror)
    assert float(towers_only.rating_score_weight) == 0.0
    assert float(teacher.rating_score_weight) == pytest.approx(0.3)  # a copy: the teacher keeps it
    distil = replace(mirror, score_rating="distil")
    assert score_teacher(teacher, distil) is teacher

    # The score head's targets are the teacher's scores without the rating term.
    (pool,) = teacher_pools(ds, split.train, teacher, config=mirror)
    ex = pool.batch(torch.arange(len(pool)))
    want = annotate(towers_only, {k: v for k, v in ex.items() if not k.startswith("t_")})
    torch.testing.assert_close(pool.targets["t_score"], want["t_score"], rtol=1e-5, atol=1e-5)
    with_term = annotate(teacher, {k: v for k, v in ex.items() if not k.startswith("t_")})
    assert not torch.allclose(with_term["t_score"], want["t_score"], atol=1e-3)

    student, info = distill_student(ds, split.train, teacher, config=mirror)
    assert info["rating_score_weight"] == pytest.approx(0.3)
    assert student.ranks_with_rating()
    plain, plain_info = distill_student(ds, split.train, teacher, config=distil)
    assert plain_info["rating_score_weight"] == 0.0 and not plain.ranks_with_rating()


def test_zeroed_blocks_make_the_model_writing_them_back_made() -> None:
    """distill.zero_blocks against what it replaced: Adam stepping every entry and the
    held blocks' values written back after each step. A sparse table (lazy Adam) and a
    dense layer, blocks of columns and of rows, repeated rows in a batch."""
    held = {"table.weight": (slice(None), slice(0, 2)), "out.weight": (slice(1, 2),)}

    def train(hold: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        torch.manual_seed(0)
        layers = OrderedDict(table=nn.Embedding(50, 6, sparse=True), out=nn.Linear(6, 3))
        net = nn.Sequential(layers)
        params = dict(net.named_parameters())
        blocks = [(params[name], index) for name, index in held.items()]
        start = {name: params[name][index].detach().clone() for name, index in held.items()}
        opt = make_adam([(p, 0.1) for p in net.parameters()], sparse=sparse_ids(net))
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            loss = net(torch.randint(0, 50, (32,), generator=gen)).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hold == "zero":
                distill.zero_blocks(blocks)
            opt.step()
            if hold == "write":
                with torch.no_grad():
                    for name, index in held.items():
                        params[name][index].copy_(start[name])
        return dict(net.state_dict()), start

    (zeroed, start), (written, _), (free, _) = train("zero"), train("write"), train("none")
    for name, value in zeroed.items():
        assert torch.equal(value, written[name]), name
    for name, index in held.items():
        assert torch.equal(zeroed[name][index], start[name]), name
        assert not torch.equal(free[name][index], start[name]), name


def test_zero_blocks_refuses_a_row_block_of_a_sparse_gradient() -> None:
    table = nn.Embedding(10, 4, sparse=True)
    table(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="every row"):
        distill.zero_blocks([(table.weight, (slice(0, 3),))])
