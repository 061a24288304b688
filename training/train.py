"""Training of the teacher components and of the ensemble teacher.

Each component is trained on two tasks at once: the rating head with MSE on the observed
ratings, and the two-tower ranking head with a sampled softmax in which every training
interaction is a positive and the negatives are items sampled uniformly from the catalogue
and masked when the user rated them in training (so negatives are unrated items).
Id-dropout replaces a share of user and item indices with the unknown index 0, so that
index learns a cold-start embedding and the side-feature fields carry weight.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor
from tqdm.auto import tqdm

from training.data import Ratings, holdout
from training.evaluate import (
    RELEVANT_MIN_RATING,
    catalogue_scorer,
    predict_pairs,
    ranking_metrics,
    rating_metrics,
)
from training.features import FeatureMap, FeatureTables
from training.models.autoint import AutoInt
from training.models.configs import AutoIntConfig, ComponentConfig, MFConfig, XDeepFMConfig
from training.models.ensemble import COMPONENTS, DEFAULT_WEIGHTS, EnsembleTeacher
from training.models.mf import BiasedMF, TowerScoring
from training.models.xdeepfm import XDeepFM

if TYPE_CHECKING:
    from training.data import Dataset

log = logging.getLogger(__name__)


@dataclass
class TeacherConfig:
    mf: MFConfig = field(default_factory=MFConfig)
    xdeepfm: XDeepFMConfig = field(default_factory=XDeepFMConfig)
    autoint: AutoIntConfig = field(default_factory=AutoIntConfig)
    seed: int = 0
    threads: int = 0  # torch.set_num_threads; 0 leaves torch's default
    valid_fraction: float = 0.1
    weight_step: float = 0.05  # grid step of the score-weight search over the simplex
    # Retrain on all training data with the selected epochs: twice the time, but on data
    # the size of ml-100k the 10% held out for selection is too much to leave unused.
    refit_full: bool = True
    progress: bool = True

    def quick(self) -> TeacherConfig:
        """Few epochs and small models: for tests and CI, not for quality."""
        return replace(
            self,
            mf=replace(
                self.mf, epochs=4, dim=16, score_dim=16, batch_size=512, lr=1e-2, tower_lr=1e-2
            ),
            xdeepfm=replace(
                self.xdeepfm,
                epochs=3,
                dim=8,
                cin_layers=(8,),
                dnn_layers=(32,),
                tower_layers=(32,),
                score_dim=16,
                batch_size=512,
                lr=1e-2,
                tower_lr=1e-2,
            ),
            autoint=replace(
                self.autoint,
                epochs=3,
                dim=8,
                layers=1,
                d_head=8,
                score_dim=16,
                batch_size=512,
                lr=1e-2,
                tower_lr=1e-2,
            ),
            weight_step=0.25,
            refit_full=False,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def set_seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_component(
    name: str, fm: FeatureMap, config: ComponentConfig, *, global_mean: float
) -> TowerScoring:
    if name == "mf" and isinstance(config, MFConfig):
        return BiasedMF(fm, dim=config.dim, score_dim=config.score_dim, global_mean=global_mean)
    if name == "xdeepfm" and isinstance(config, XDeepFMConfig):
        return XDeepFM(
            fm,
            dim=config.dim,
            cin_layers=config.cin_layers,
            dnn_layers=config.dnn_layers,
            dropout=config.dropout,
            score_dim=config.score_dim,
            tower_layers=config.tower_layers,
            global_mean=global_mean,
        )
    if name == "autoint" and isinstance(config, AutoIntConfig):
        return AutoInt(
            fm,
            dim=config.dim,
            layers=config.layers,
            heads=config.heads,
            d_head=config.d_head,
            score_dim=config.score_dim,
            tower_layers=config.tower_layers,
            global_mean=global_mean,
        )
    raise ValueError(f"unknown component {name!r} or config {type(config).__name__}")


class _SeenIndex:
    """Membership test for (user, item) training pairs, vectorised with searchsorted."""

    def __init__(self, train: Ratings, *, n_items: int) -> None:
        self.stride = n_items + 1
        keys = np.unique(train.user.astype(np.int64) * self.stride + train.item)
        self.keys = torch.as_tensor(keys, dtype=torch.long)

    def contains(self, users: Tensor, items: Tensor) -> Tensor:
        keys = users.unsqueeze(1) * self.stride + items.unsqueeze(0)  # [B, N]
        pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
        return self.keys[pos] == keys  # [B, N]


def evaluate_component(
    model: TowerScoring, tables: FeatureTables, *, train: Ratings, valid: Ratings, fm: FeatureMap
) -> dict[str, float]:
    pred, _ = predict_pairs(model, tables, valid.user, valid.item)
    out = rating_metrics(pred, valid.rating)
    out.update(
        ranking_metrics(
            catalogue_scorer(model, tables, n_items=fm.n_items),
            train=train,
            test=valid,
            n_users=fm.n_users,
            n_items=fm.n_items,
        )
    )
    return out


def _merge_heads(
    model: TowerScoring, rating_state: dict[str, Tensor], tower_state: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Rating-head parameters from one snapshot, ranking-tower parameters from another."""
    return {
        k: (tower_state if k.startswith(model.tower_prefixes) else rating_state)[k]
        for k in rating_state
    }


def train_component(
    name: str,
    fm: FeatureMap,
    tables: FeatureTables,
    train: Ratings,
    *,
    config: ComponentConfig,
    valid: Ratings | None = None,
    head_epochs: tuple[int, int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[TowerScoring, dict[str, Any]]:
    """Trains one component.

    With `valid` and `config.select == "heads"`, each head is kept at its best validation
    epoch (RMSE for the rating head, NDCG@10 for the towers). Without `valid`,
    `head_epochs` = (rating epoch, ranking epoch) takes each head from the given epoch,
    which is how a refit on all training data reproduces the selected epochs.
    """
    if len(train) == 0:
        raise ValueError(f"cannot train {name}: the training split has no ratings")
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_component(name, fm, config, global_mean=float(train.rating.mean()))
    tower = [p for n, p in model.named_parameters() if n.startswith(model.tower_prefixes)]
    rest = [p for n, p in model.named_parameters() if not n.startswith(model.tower_prefixes)]
    opt = torch.optim.Adam(
        [
            {"params": rest, "lr": config.lr},
            {"params": tower, "lr": config.tower_lr or config.lr},
        ]
    )
    seen = _SeenIndex(train, n_items=fm.n_items)
    user_feats = torch.as_tensor(tables.user_feats)
    item_feats = torch.as_tensor(tables.item_feats)
    item_genres = torch.as_tensor(tables.item_genres)
    users = torch.as_tensor(train.user, dtype=torch.long)
    items = torch.as_tensor(train.item, dtype=torch.long)
    ratings = torch.as_tensor(train.rating, dtype=torch.float32)
    n = len(train)
    curves: list[dict[str, float]] = []
    best_rating: tuple[float, int, dict[str, Tensor]] | None = None
    best_ranking: tuple[float, int, dict[str, Tensor]] | None = None
    if head_epochs is not None:
        config = replace(config, epochs=max(head_epochs))
    started = time.perf_counter()
    epochs = tqdm(range(config.epochs), desc=name, disable=not progress, leave=False)
    for epoch in epochs:
        model.train()
        perm = torch.randperm(n, generator=gen)
        totals = {"loss": 0.0, "mse": 0.0, "rank": 0.0}
        batches = tqdm(
            range(0, n, config.batch_size),
            desc=f"{name} e{epoch}",
            disable=not progress,
            leave=False,
        )
        for start in batches:
            idx = perm[start : start + config.batch_size]
            u, i, r = users[idx], items[idx], ratings[idx]
            u_in = u.masked_fill(torch.rand(u.shape, generator=gen) < config.id_dropout, 0)
            i_in = i.masked_fill(torch.rand(i.shape, generator=gen) < config.id_dropout, 0)
            uf, itf, ig = user_feats[u], item_feats[i], item_genres[i]
            out = model.heads(u_in, i_in, uf, itf, ig)
            mse = (out["rating"] - r).pow(2).mean()
            n_neg = config.n_negatives if 0 < config.n_negatives < fm.n_items else 0
            neg = (
                torch.randint(1, fm.n_items + 1, (n_neg,), generator=gen)
                if n_neg
                else torch.arange(1, fm.n_items + 1)
            )
            user_vec = model.user_tower(u_in, uf)  # [B, D]
            pos_vec = model.item_tower(i_in, itf, ig)  # [B, D]
            neg_vec = model.item_tower(neg, item_feats[neg], item_genres[neg])  # [N, D]
            pos_logit = (user_vec * pos_vec).sum(dim=1, keepdim=True)  # [B, 1]
            neg_logit = (user_vec @ neg_vec.T).masked_fill(seen.contains(u, neg), float("-inf"))
            logits = torch.cat([pos_logit, neg_logit], dim=1)  # [B, 1+N]
            pos_weight = torch.where(r >= RELEVANT_MIN_RATING, 1.0, config.low_rating_weight)
            rank_each = torch.logsumexp(logits, dim=1) - logits[:, 0]  # [B]
            rank = (rank_each * pos_weight).sum() / pos_weight.sum().clamp(min=1e-12)
            reg = config.rating_l2 * model.regularizer(u_in, i_in, uf, itf, ig).mean()
            reg = reg + config.tower_l2 * (user_vec.pow(2).sum(1) + pos_vec.pow(2).sum(1)).mean()
            loss = config.rating_weight * mse + config.ranking_weight * rank + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            weight = len(idx) / n
            totals["loss"] += float(loss.detach()) * weight
            totals["mse"] += float(mse.detach()) * weight
            totals["rank"] += float(rank.detach()) * weight
        point: dict[str, float] = {"epoch": float(epoch + 1), **totals}
        if valid is not None and len(valid) > 0:
            metrics = evaluate_component(model, tables, train=train, valid=valid, fm=fm)
            point.update({f"valid_{k}": v for k, v in metrics.items() if k != "n_users"})
            if config.select == "heads":
                if best_rating is None or -metrics["rmse"] > best_rating[0]:
                    best_rating = (-metrics["rmse"], epoch + 1, copy.deepcopy(model.state_dict()))
                if best_ranking is None or metrics["ndcg@10"] > best_ranking[0]:
                    best_ranking = (
                        metrics["ndcg@10"],
                        epoch + 1,
                        copy.deepcopy(model.state_dict()),
                    )
        elif head_epochs is not None:
            if epoch + 1 == head_epochs[0]:
                best_rating = (0.0, epoch + 1, copy.deepcopy(model.state_dict()))
            if epoch + 1 == head_epochs[1]:
                best_ranking = (0.0, epoch + 1, copy.deepcopy(model.state_dict()))
        curves.append(point)
        log.info(
            "%s epoch %d: %s",
            name,
            epoch + 1,
            ", ".join(f"{k}={v:.4f}" for k, v in point.items() if k != "epoch"),
        )
    epochs_kept = [config.epochs, config.epochs]
    if best_rating is not None and best_ranking is not None:
        epochs_kept = [best_rating[1], best_ranking[1]]
        model.load_state_dict(_merge_heads(model, best_rating[2], best_ranking[2]))
    model.eval()
    info = {"curves": curves, "head_epochs": epochs_kept, "seconds": time.perf_counter() - started}
    return model, info


def train_teacher(
    dataset: Dataset, train: Ratings, *, config: TeacherConfig
) -> tuple[EnsembleTeacher, dict[str, Any]]:
    """Trains the three components, fits the ensemble weights on a validation split.

    Returns the teacher and a report: per-component and ensemble validation metrics,
    default and fitted weights with what each gives, training curves and timings.
    """
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    fm, tables = dataset.feature_map, dataset.tables
    started = time.perf_counter()
    fit, valid = holdout(train, fraction=config.valid_fraction, seed=config.seed)
    if len(valid) == 0 or not np.any(valid.rating >= RELEVANT_MIN_RATING):
        raise ValueError(
            f"the validation split ({config.valid_fraction:.0%} of {len(train)} training "
            "ratings) has no rating >= 4 to fit the ensemble on; use more data"
        )
    configs: dict[str, ComponentConfig] = {
        "mf": config.mf,
        "xdeepfm": config.xdeepfm,
        "autoint": config.autoint,
    }
    models: dict[str, TowerScoring] = {}
    report: dict[str, Any] = {"config": config.to_dict(), "components": {}}
    for k, name in enumerate(COMPONENTS):
        model, info = train_component(
            name,
            fm,
            tables,
            fit,
            config=configs[name],
            valid=valid,
            seed=config.seed + k,
            progress=config.progress,
        )
        info["valid"] = evaluate_component(model, tables, train=fit, valid=valid, fm=fm)
        models[name] = model
        report["components"][name] = info
        log.info("%s valid: %s", name, info["valid"])
    teacher = EnsembleTeacher(models["mf"], models["xdeepfm"], models["autoint"])
    weights = fit_ensemble_weights(
        teacher,
        tables,
        fit=fit,
        valid=valid,
        fm=fm,
        step=config.weight_step,
        seed=config.seed,
    )
    report["ensemble"] = weights
    if config.refit_full:
        refit: dict[str, TowerScoring] = {}
        for k, name in enumerate(COMPONENTS):
            kept = report["components"][name]["head_epochs"]
            model, info = train_component(
                name,
                fm,
                tables,
                train,
                config=configs[name],
                head_epochs=(int(kept[0]), int(kept[1])),
                seed=config.seed + k,
                progress=config.progress,
            )
            refit[name] = model
            report["components"][name]["refit_seconds"] = info["seconds"]
        refitted = EnsembleTeacher(refit["mf"], refit["xdeepfm"], refit["autoint"])
        refitted.load_weights_from(teacher, tables=tables, users=np.unique(valid.user))
        teacher = refitted
    report["seconds"] = time.perf_counter() - started
    teacher.eval()
    return teacher, report


def simplex_grid(step: float, *, dims: int = 3) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex whose entries are multiples of `step`."""
    n = round(1.0 / step)
    points = []
    for a in range(n + 1):
        for b in range(n + 1 - a):
            rest = [a, b, n - a - b] if dims == 3 else [a, n - a]
            points.append(tuple(x / n for x in rest))
    return points


def fit_ensemble_weights(
    teacher: EnsembleTeacher,
    tables: FeatureTables,
    *,
    fit: Ratings,
    valid: Ratings,
    fm: FeatureMap,
    step: float = 0.05,
    max_users: int = 3000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fits the blend on the validation split and sets it on `teacher`.

    Rating weights: non-negative least squares with an intercept on the clipped component
    predictions. Score weights: the grid point on the simplex with the best validation
    NDCG@10 (ties go to the point nearest the default weights).
    """
    teacher.eval()
    preds = np.stack(
        [predict_pairs(c, tables, valid.user, valid.item)[0] for c in teacher.components], axis=1
    ).astype(np.float64)  # [n_valid, 3], clipped
    y = valid.rating.astype(np.float64)
    design = np.concatenate([preds, np.ones((len(y), 1)), -np.ones((len(y), 1))], axis=1)
    solution, _ = nnls(design, y)
    rating_w = solution[:3]
    rating_b = float(solution[3] - solution[4])
    default = np.asarray(DEFAULT_WEIGHTS)

    users = np.unique(valid.user[valid.rating >= 4.0])
    if users.size > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    teacher.standardise(users, tables)
    mats = teacher.component_score_matrices(users, tables)
    z = np.stack([((m - m.mean()) / m.std().clamp(min=1e-6)).numpy() for m in mats])
    row_of = np.full(fm.n_users + 1, -1, dtype=np.int64)
    row_of[users] = np.arange(users.size)
    keep = np.isin(valid.user, users)
    sub_valid = valid.subset(keep)

    def ranking(w: np.ndarray) -> dict[str, float]:
        blend = np.tensordot(w, z, axes=1)  # [n_users_eval, n_items]
        return ranking_metrics(
            lambda us: blend[row_of[us]],
            train=fit,
            test=sub_valid,
            n_users=fm.n_users,
            n_items=fm.n_items,
        )

    best: tuple[float, float, tuple[float, ...]] | None = None
    for point in simplex_grid(step):
        w = np.asarray(point)
        value = ranking(w)["ndcg@10"]
        key = (value, -float(np.abs(w - default).sum()), point)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    score_w = np.asarray(best[2])
    teacher.set_weights(rating=rating_w.tolist(), rating_bias=rating_b, score=score_w.tolist())

    def rating_of(w: np.ndarray, b: float) -> dict[str, float]:
        return rating_metrics(preds @ w + b, y)

    return {
        "default": {
            "rating_weights": default.tolist(),
            "rating_bias": 0.0,
            "score_weights": default.tolist(),
            **rating_of(default, 0.0),
            **_ranking_only(ranking(default)),
        },
        "fitted": {
            "rating_weights": rating_w.tolist(),
            "rating_bias": rating_b,
            "score_weights": score_w.tolist(),
            **rating_of(rating_w, rating_b),
            **_ranking_only(ranking(score_w)),
        },
        "valid_users": int(users.size),
    }


def _ranking_only(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "n_users"}
