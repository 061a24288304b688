"""Pruning: the importance methods, the greedy selection and physical removal of units."""

from __future__ import annotations

import torch

from tests.training.test_fisher import lists, loss_fn, tiny_student
from tests.training.test_student import SMALL, feature_map
from training.models.base import count_params
from training.models.student import UNIT_KINDS, Student, shape_params
from training.prune import apply_keep, prune_step, select_keep, unit_importance


def test_select_keep_drops_least_important_per_parameter_and_respects_minimum() -> None:
    model = Student(feature_map(), shape=SMALL)
    importance = {k: torch.ones(n) for k, n in model.unit_counts().items()}
    importance["user_hidden"] = torch.tensor([5.0, 0.0, 5.0, 0.0, 5.0, 5.0, 5.0])
    cost = model.unit_cost("user_hidden")
    keep = select_keep(model, importance, remove_params=2 * cost, min_units=2)
    assert keep["user_hidden"].tolist() == [0, 2, 4, 5, 6]
    for kind in UNIT_KINDS:
        if kind != "user_hidden":
            assert keep[kind].numel() == model.unit_counts()[kind]
    # Asking for everything stops at min_units of every kind.
    keep = select_keep(model, importance, remove_params=10**9, min_units=2)
    assert all(keep[k].numel() == 2 for k in UNIT_KINDS)
    # A floor holds one kind above min_units while the removal can be met above it (here
    # everything else, less one unit's cost); a floor above the current count drops none.
    floors = {"user_rating_dim": 3, "item_rating_dim": 9}
    others = sum(
        (n - 2) * model.unit_cost(k) for k, n in model.unit_counts().items() if k not in floors
    )
    reachable = others + (SMALL.user_rating_dim - 3) * model.unit_cost("user_rating_dim")
    keep = select_keep(model, importance, remove_params=reachable, min_units=2, floors=floors)
    assert keep["user_rating_dim"].numel() == 3
    assert keep["item_rating_dim"].numel() == SMALL.item_rating_dim
    assert all(keep[k].numel() == 2 for k in UNIT_KINDS if k not in floors)
    # Floors give way to the size target where it cannot be met above them.
    keep = select_keep(model, importance, remove_params=10**9, min_units=2, floors=floors)
    assert all(keep[k].numel() == 2 for k in UNIT_KINDS)


def test_a_higher_tier_goes_only_after_every_lower_one_of_any_kind() -> None:
    model = Student(feature_map(), shape=SMALL)
    n = SMALL.score_factor
    importance = {k: torch.ones(c) for k, c in model.unit_counts().items()}
    importance["score_factor"] = torch.arange(n, 0, -1) * 1e-3  # the last is least important
    cost = model.unit_cost("score_factor")
    others = sum((c - 2) * model.unit_cost(k) for k, c in model.unit_counts().items())
    others -= (n - 2) * cost
    # Without tiers the factors go first, least important first.
    keep = select_keep(model, importance, remove_params=2 * cost)
    assert keep["score_factor"].tolist() == list(range(n - 2))
    assert all(keep[k].numel() == c for k, c in model.unit_counts().items() if k != "score_factor")
    # Tiers 1, 2, ...: every other unit goes first, then factor 0 and factor 1.
    tiers = {"score_factor": torch.arange(1, n + 1)}
    keep = select_keep(model, importance, remove_params=others + 2 * cost, tiers=tiers)
    assert keep["score_factor"].tolist() == list(range(2, n))
    assert all(keep[k].numel() == 2 for k in UNIT_KINDS if k != "score_factor")


def test_magnitude_and_fisher_rank_silent_units_last() -> None:
    model = tiny_student(4)
    with torch.no_grad():
        model.item.hidden.weight[1] = 0.0
        model.item.hidden.bias[1] = 0.0
        model.item.rating_out.weight[:, 1] = 0.0
        model.item.hidden.bias[[0, 2, 3]] = 1.0  # live for every input: their Fisher is > 0
    magnitude = unit_importance(model, method="magnitude")
    assert int(magnitude["item_hidden"].argmin()) == 1
    assert float(magnitude["item_hidden"][1]) == 0.0
    fisher = unit_importance(model, method="fisher", loss_fn=loss_fn, batches=[lists(8, 4)])
    assert float(fisher["item_hidden"][1]) == 0.0
    assert bool((fisher["item_hidden"][[0, 2, 3]] > 0).all())
    for kind, n in model.unit_counts().items():
        assert magnitude[kind].shape == fisher[kind].shape == (n,)


def test_random_importance_is_seeded() -> None:
    model = tiny_student(5)
    a = unit_importance(model, method="random", generator=torch.Generator().manual_seed(3))
    b = unit_importance(model, method="random", generator=torch.Generator().manual_seed(3))
    for kind in UNIT_KINDS:
        torch.testing.assert_close(a[kind], b[kind])


def test_prune_step_reaches_target_with_smaller_tensors() -> None:
    model = tiny_student(6)
    before = count_params(model)
    target = before // 2
    seen: list[tuple[str, int]] = []
    step = prune_step(
        model,
        target_params=target,
        method="fisher",
        loss_fn=loss_fn,
        batches=[lists(8, 4, seed=1)],
        on_prune=lambda k, keep: seen.append((k, keep.numel())),
    )
    assert step.params_before == before
    assert step.params_after == count_params(model) <= target
    assert count_params(model) == shape_params(feature_map(), model.shape)
    assert sum(step.removed.values()) > 0
    for kind, kept in seen:
        assert model.unit_counts()[kind] <= kept
    assert all(n >= 2 for n in model.unit_counts().values())
    # Still a working model with the new shapes.
    out = model.heads(
        *[
            v.reshape(-1, *v.shape[2:])
            for k, v in lists(2, 3).items()
            if k in ("user", "item", "user_feats", "item_feats", "item_genres")
        ]
    )
    assert out["repr"].shape[1] == model.shape.rating_factor + model.shape.score_factor


def test_apply_keep_with_everything_kept_changes_nothing() -> None:
    model = tiny_student(7)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    removed = apply_keep(model, {k: torch.arange(n) for k, n in model.unit_counts().items()})
    assert not any(removed.values())
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
