"""Training of the teacher components and of the ensemble teacher.

Each component is trained on two tasks at once: the rating head with MSE on the observed
ratings, and the two-tower ranking head with a softmax in which every training
interaction is a positive and the negatives are the whole catalogue (catalogues of at most
`exact_softmax_items`) or items sampled uniformly from it, masked when the user rated them
in training (so negatives are unrated items).
Id-dropout replaces a share of user and item indices with the unknown index 0, so that
index learns a cold-start embedding and the side-feature fields carry weight.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from scipy.optimize import nnls
from torch import Tensor, nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from training.bayes_rating import BAYES_MAX_ITEMS, RATING_ROWS, GibbsSettings, fit_rating_head
from training.blend_scores import TeacherScores, block_users, search_users
from training.blend_topk import BlendTopK
from training.component_pool import (
    ComponentTask,
    Refit,
    Refitted,
    SharedInputs,
    rank_cpus,
    resolve_jobs,
    train_components,
)
from training.data import Ratings, holdout
from training.device import reproducible, resolve_device
from training.distributed import World, broadcast, current, local_device, shard, wrap
from training.evaluate import (
    RELEVANT_MIN_RATING,
    bounded_users,
    evaluate_model,
    predict_pairs,
    rating_metrics,
    top_k_metrics,
)
from training.features import FeatureMap, FeatureTables
from training.models.autoint import AutoInt
from training.models.configs import (
    AutoIntConfig,
    ComponentConfig,
    Head,
    MFConfig,
    Select,
    XDeepFMConfig,
)
from training.models.ensemble import COMPONENTS, DEFAULT_WEIGHTS, EnsembleTeacher
from training.models.layers import TowerScoring, UserHistory
from training.models.mf import BiasedMF
from training.models.xdeepfm import XDeepFM
from training.seen import SeenIndex
from training.seen_mask import SeenMask
from training.sparse import (
    SPARSE_MIN_ROWS,
    Optimizers,
    densify_embeddings,
    make_adam,
    sparse_ids,
    sparsify_embeddings,
)

if TYPE_CHECKING:
    from training.data import Dataset

log = logging.getLogger(__name__)


# ml-100k's 80-100k training ratings refit; ML-1M's 900k do not (docs/SCALE.md).
REFIT_MAX_RATINGS = 250_000
# Items of a user's history a training step sums where history tables are sparse
# (ComponentConfig.history_sample "auto"; docs/SCALE.md item 31).
AUTO_HISTORY_SAMPLE = 128


@dataclass
class TeacherConfig:
    mf: MFConfig = field(default_factory=MFConfig)
    xdeepfm: XDeepFMConfig = field(default_factory=XDeepFMConfig)
    autoint: AutoIntConfig = field(default_factory=AutoIntConfig)
    seed: int = 0
    threads: int = 0  # torch.set_num_threads; 0 leaves torch's default
    valid_fraction: float = 0.1
    weight_step: float = 0.05  # grid step of the score-weight search over the simplex
    # Weight g of MF's standardised rating in the teacher's ranking score, added to the
    # weights the grid fitted (models/ensemble.py): a user's items ranked also by how they
    # would rate them, as protocol P counts only items rated >= 4. Chosen on held-back
    # training data of u1-u5, two seeds: 0.1 raised NDCG@10 by 0.0048 (10 of 10 fold-seed
    # pairs) and Recall@10 by 0.0051 (9 of 10); 0.3 and more lowered both
    # (bench/results/blend-rating.md, python -m bench.blend --rating-scores).
    rating_score_weight: float = 0.1
    # Retrain on all training data with the selected epochs: twice the time, but on data
    # the size of ml-100k the 10% held out for selection is too much to leave unused.
    # "auto" refits only up to REFIT_MAX_RATINGS training ratings: beyond, the held-out
    # tenth adds little the model lacks and the refit would double the teacher's time.
    refit_full: bool | Literal["auto"] = "auto"
    # Processes training the components side by side on a CPU (training/component_pool.py);
    # 0 = as many as the usable CPUs hold at `threads` each. Same models either way.
    jobs: int = 1
    # torch.compile each component's loss: 10-26% faster steps on this CPU after 13-62 s of
    # compiling per component (bench/compile.py, docs/SCALE.md), which pays on ML-1M-sized
    # data, not on ml-100k's; numerically close to eager, not identical, so off by default.
    compile: bool = False
    progress: bool = True
    device: str = "cpu"  # "auto" | "cpu" | "cuda" (training.device); not part of run keys

    def quick(self) -> TeacherConfig:
        """Few epochs and small models: for tests and CI, not for quality."""
        return replace(
            self,
            mf=replace(
                self.mf,
                epochs=4,
                dim=16,
                score_dim=16,
                batch_size=512,
                lr=1e-2,
                tower_lr=1e-2,
                bayes_dim=8,
                bayes_sweeps=20,
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

    def refits(self, n_ratings: int) -> bool:
        """Whether the teacher is retrained on all `n_ratings` training ratings."""
        if self.refit_full == "auto":
            return n_ratings <= REFIT_MAX_RATINGS
        return bool(self.refit_full)


def set_seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


_COMPONENTS: dict[str, tuple[type[TowerScoring], type[ComponentConfig]]] = {
    "mf": (BiasedMF, MFConfig),
    "xdeepfm": (XDeepFM, XDeepFMConfig),
    "autoint": (AutoInt, AutoIntConfig),
}


def build_component(
    name: str, fm: FeatureMap, config: ComponentConfig, *, global_mean: float
) -> TowerScoring:
    model_cls, config_cls = _COMPONENTS.get(name, (None, None))
    if model_cls is None or config_cls is None or not isinstance(config, config_cls):
        raise ValueError(f"unknown component {name!r} or config {type(config).__name__}")
    return model_cls.from_config(config, fm, global_mean=global_mean)  # type: ignore[attr-defined]


def evaluate_component(
    model: TowerScoring, tables: FeatureTables, *, train: Ratings, valid: Ratings, fm: FeatureMap
) -> dict[str, float]:
    """Protocol P on the validation split (the project's one evaluation, `evaluate_model`).

    Ranking covers every validation user unless the catalogue is large enough for that to
    dominate an epoch; then a seeded sample of `bounded_users` users (docs/SCALE.md).
    """
    return evaluate_model(
        model,
        tables,
        train=train,
        test=valid,
        n_users=fm.n_users,
        n_items=fm.n_items,
        max_users=bounded_users(fm.n_items),
    )


# ---------------------------------------------------------------- one component's training
# Split the way FuxiCTR's BaseModel splits fit / train_epoch / train_step / evaluate and its
# checkpoint-and-early-stop rule; the random draws happen in the same order as ever, so a
# seed gives the same model.


@dataclass(frozen=True)
class TrainData:
    """The training ratings and feature tables as tensors, built once per component."""

    users: Tensor  # long [n]
    items: Tensor  # long [n]
    ratings: Tensor  # float32 [n]
    user_feats: Tensor
    item_feats: Tensor
    item_genres: Tensor
    seen_mask: SeenMask  # the training pairs' SeenIndex, in torch
    n_items: int

    @classmethod
    def build(
        cls,
        train: Ratings,
        tables: FeatureTables,
        fm: FeatureMap,
        *,
        device: torch.device | str = "cpu",
    ) -> TrainData:
        seen = SeenIndex.from_ratings(train, n_users=fm.n_users, n_items=fm.n_items)
        return cls(
            users=torch.as_tensor(train.user, dtype=torch.long, device=device),
            items=torch.as_tensor(train.item, dtype=torch.long, device=device),
            ratings=torch.as_tensor(train.rating, dtype=torch.float32, device=device),
            user_feats=torch.as_tensor(tables.user_feats, device=device),
            item_feats=torch.as_tensor(tables.item_feats, device=device),
            item_genres=torch.as_tensor(tables.item_genres, device=device),
            seen_mask=SeenMask.from_index(seen).to(torch.device(device)),
            n_items=fm.n_items,
        )

    @property
    def device(self) -> torch.device:
        return self.users.device

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def catalogue(self) -> Tensor:
        """Every item index, 0 (unknown) included: [1 + n_items]."""
        return torch.arange(self.n_items + 1, device=self.device)

    def seen(self, users: Tensor, items: Tensor) -> Tensor:
        """[B, N]: whether user `users[b]` rated item `items[n]` in training."""
        return self.seen_mask(users, items)


@dataclass
class Trainer:
    """One component being trained: model, optimiser, data and the training generator."""

    name: str
    model: TowerScoring
    config: ComponentConfig
    data: TrainData
    opt: torch.optim.Optimizer | Optimizers
    gen: torch.Generator
    progress: bool = True
    world: World = field(default_factory=World)
    # component_loss as DistributedDataParallel's forward when there are several ranks.
    objective: nn.Module | None = None


class ComponentObjective(nn.Module):
    """`component_loss` as a module, so DistributedDataParallel can wrap it."""

    def __init__(self, trainer: Trainer) -> None:
        super().__init__()
        self.model = trainer.model
        self.trainer = [trainer]  # a list: not a submodule, not in the state dict

    def forward(self, u: Tensor, i: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return component_loss(self.trainer[0], u, i, r)


def make_optimizer(
    model: TowerScoring, config: ComponentConfig
) -> torch.optim.Optimizer | Optimizers:
    """Adam with its own learning rate for the ranking towers (lazy for sparse tables)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    tower_lr = config.tower_lr or config.lr
    rest = [(p, config.lr) for n, p in named if not n.startswith(model.tower_prefixes)]
    tower = [(p, tower_lr) for n, p in named if n.startswith(model.tower_prefixes)]
    return make_adam([*rest, *tower], sparse=sparse_ids(model))


def component_loss(t: Trainer, u: Tensor, i: Tensor, r: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(total loss, rating MSE, ranking loss) of one batch of training pairs.

    A head whose loss weight is 0 is not run at all (its loss reads 0): a refit of the
    other head alone (`ComponentConfig.refit_heads`) pays only for that head.
    """
    model, config, data, gen = t.model, t.config, t.data, t.gen
    # Random draws come from the CPU generator on every device, so a seed gives the same
    # draws on CPU and GPU; .to() is a no-op on the CPU.
    dev = data.device
    u_in = u.masked_fill((torch.rand(u.shape, generator=gen) < config.id_dropout).to(dev), 0)
    i_in = i.masked_fill((torch.rand(i.shape, generator=gen) < config.id_dropout).to(dev), 0)
    # Drawn whichever heads run, so that a one-head refit sees a joint run's draws.
    neg = ranking_negatives(config, data.n_items, gen)
    uf, itf, ig = data.user_feats[u], data.item_feats[i], data.item_genres[i]
    mse = rank = reg = torch.zeros((), device=dev)
    if config.rating_weight:
        rating, penalty = model.rating_fit(u_in, i_in, uf, itf, ig)
        mse = (rating - r).pow(2).mean()
        reg = config.rating_l2 * penalty.mean()
    if config.ranking_weight:
        rank, tower_norms = _ranking_loss(
            t, u, i, r, u_in=u_in, i_in=i_in, feats=(uf, itf, ig), neg=neg
        )
        reg = reg + config.tower_l2 * tower_norms
    loss = config.rating_weight * mse + config.ranking_weight * rank + reg
    return loss, mse, rank


def ranking_negatives(config: ComponentConfig, n_items: int, gen: torch.Generator) -> Tensor | None:
    """The item ids (1-based) one step's tower softmax runs over: None for the whole
    catalogue, when it is small (`exact_softmax_items`) or the sample would cover it, else
    `n_negatives` drawn uniformly with replacement."""
    sampled = 0 < config.n_negatives < n_items and n_items > config.exact_softmax_items
    if sampled:
        return torch.randint(1, n_items + 1, (config.n_negatives,), generator=gen)
    return None


def _ranking_loss(
    t: Trainer,
    u: Tensor,
    i: Tensor,
    r: Tensor,
    *,
    u_in: Tensor,
    i_in: Tensor,
    feats: tuple[Tensor, Tensor, Tensor],
    neg: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """The towers' softmax loss over `neg` (`ranking_negatives`; None: the catalogue),
    weighted by rating, and the towers' mean squared norms."""
    model, config, data = t.model, t.config, t.data
    uf, itf, ig = feats
    user_vec = model.train_user_tower(u_in, uf, i)  # [B, D]
    if neg is None:
        # One tower pass over the catalogue also gives the positives' vectors (the towers
        # have no dropout); a positive whose id was dropped keeps its own side features,
        # so those few rows get their own pass. Column 0, the unknown item's, carries the
        # positive's logit, so the logits need no concatenation: column j > 0 is item j,
        # masked where the user rated it, the positive included.
        every = model.item_tower(data.catalogue, data.item_feats, data.item_genres)  # [1+N, D]
        pos_vec = every[i]  # [B, D]
        dropped = (i_in == 0).nonzero().squeeze(1)
        if dropped.numel():
            own = model.item_tower(i_in[dropped], itf[dropped], ig[dropped])  # [b, D]
            pos_vec = pos_vec.index_copy(0, dropped, own)
        logits = user_vec @ every.T  # [B, 1+N]
        logits[:, 0] = (user_vec * pos_vec).sum(dim=1)
        logits = data.seen_mask.mask_catalogue_(logits, u)
    else:
        neg = neg.to(data.device)
        pos_vec = model.item_tower(i_in, itf, ig)  # [B, D]
        neg_vec = model.item_tower(neg, data.item_feats[neg], data.item_genres[neg])  # [N, D]
        pos_logit = (user_vec * pos_vec).sum(dim=1, keepdim=True)  # [B, 1]
        neg_logit = (user_vec @ neg_vec.T).masked_fill(data.seen(u, neg), float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # [B, 1+N]
    # logsumexp minus the positive's logit, fused: about half the time of the two steps.
    rank_each = F.cross_entropy(logits, torch.zeros_like(u), reduction="none")  # [B]
    pos_weight = torch.where(r >= RELEVANT_MIN_RATING, 1.0, config.low_rating_weight)
    rank = (rank_each * pos_weight).sum() / pos_weight.sum().clamp(min=1e-12)
    norms = (user_vec.pow(2).sum(1) + pos_vec.pow(2).sum(1)).mean()
    return rank, norms


def train_step(t: Trainer, idx: Tensor) -> tuple[float, float, float]:
    """One optimiser step on the training pairs `idx`; returns (loss, mse, rank)."""
    data = t.data
    idx = idx.to(data.device)
    u, i, r = data.users[idx], data.items[idx], data.ratings[idx]
    loss, mse, rank = component_loss(t, u, i, r) if t.objective is None else t.objective(u, i, r)
    t.opt.zero_grad(set_to_none=True)
    loss.backward()
    t.opt.step()
    return float(loss.detach()), float(mse.detach()), float(rank.detach())


def train_epoch(t: Trainer, epoch: int) -> dict[str, float]:
    """One pass over the training pairs in a seeded order; the example-weighted mean losses."""
    t.model.train()
    # Every rank draws the same permutation and trains on its shard of it.
    perm = shard(torch.randperm(len(t.data), generator=t.gen), t.world)
    n = perm.numel()
    totals = {"loss": 0.0, "mse": 0.0, "rank": 0.0}
    batches = tqdm(
        range(0, n, t.config.batch_size),
        desc=f"{t.name} e{epoch}",
        disable=not t.progress,
        leave=False,
    )
    for start in batches:
        idx = perm[start : start + t.config.batch_size]
        loss, mse, rank = train_step(t, idx)
        weight = len(idx) / n
        totals["loss"] += loss * weight
        totals["mse"] += mse * weight
        totals["rank"] += rank * weight
    return totals


@dataclass
class Snapshot:
    """A head's best value so far, the epoch it came from and the model state then."""

    value: float
    epoch: int
    state: dict[str, Tensor]


@dataclass
class HeadSelector:
    """The checkpoint-and-early-stop rule, one head at a time.

    With validation metrics and select="heads" the rating head is kept from the epoch of
    the best RMSE and the ranking towers from that of the best NDCG@10; without them,
    `head_epochs` names both epochs (a refit repeating an earlier selection); otherwise the
    last epoch is kept.
    """

    select: Select
    head_epochs: tuple[int, int] | None = None
    rating: Snapshot | None = None
    ranking: Snapshot | None = None

    def observe(self, model: TowerScoring, epoch: int, metrics: dict[str, float] | None) -> None:
        """Called after each epoch (1-based) with its validation metrics, if any."""
        if metrics is not None:
            if self.select == "heads":
                if self.rating is None or -metrics["rmse"] > self.rating.value:
                    self.rating = Snapshot(-metrics["rmse"], epoch, _state(model))
                if self.ranking is None or metrics["ndcg@10"] > self.ranking.value:
                    self.ranking = Snapshot(metrics["ndcg@10"], epoch, _state(model))
        elif self.head_epochs is not None:
            if epoch == self.head_epochs[0]:
                self.rating = Snapshot(0.0, epoch, _state(model))
            if epoch == self.head_epochs[1]:
                self.ranking = Snapshot(0.0, epoch, _state(model))

    def stale(self, epoch: int, patience: int) -> bool:
        """Whether neither head improved in the last `patience` epochs (never without
        validation snapshots or with patience 0)."""
        return all(self.head_stale(head, epoch, patience) for head in ("rating", "ranking"))

    def head_stale(self, head: Head, epoch: int, patience: int) -> bool:
        """Whether `head` did not improve in the last `patience` epochs (never without a
        validation snapshot or with patience 0)."""
        snapshot = self.rating if head == "rating" else self.ranking
        return patience > 0 and snapshot is not None and epoch - snapshot.epoch >= patience

    def restore(self, model: TowerScoring, *, last_epoch: int) -> list[int]:
        """Loads the kept heads into `model`; returns [rating epoch, ranking epoch]."""
        if self.rating is None or self.ranking is None:
            return [last_epoch, last_epoch]
        model.load_state_dict(_merge_heads(model, self.rating.state, self.ranking.state))
        return [self.rating.epoch, self.ranking.epoch]


def _state(model: TowerScoring) -> dict[str, Tensor]:
    return copy.deepcopy(model.state_dict())


def _merge_heads(
    model: TowerScoring, rating_state: dict[str, Tensor], tower_state: dict[str, Tensor]
) -> dict[str, Tensor]:
    """Rating-head parameters from one snapshot, ranking-tower parameters from another."""
    return {
        k: (tower_state if k.startswith(model.tower_prefixes) else rating_state)[k]
        for k in rating_state
    }


def training_model(
    name: str, fm: FeatureMap, config: ComponentConfig, data: TrainData, *, global_mean: float
) -> TowerScoring:
    """A new component on the data's device, with what only training needs attached."""
    model = build_component(name, fm, config, global_mean=global_mean)
    model.to(data.device)
    seen = data.seen_mask
    if isinstance(model, BiasedMF) and isinstance(config, MFConfig) and config.history:
        model.attach_history(
            seen.indptr, seen.indices, alpha=config.history_alpha, rating=config.rating_history
        )
    if isinstance(model, XDeepFM) and isinstance(config, XDeepFMConfig) and config.history:
        model.attach_history(seen.indptr, seen.indices, alpha=config.history_alpha)
    n_sparse = sparsify_embeddings(model, min_rows=SPARSE_MIN_ROWS)
    if n_sparse:
        log.info("%s: %d embedding tables with sparse gradients (lazy Adam)", name, n_sparse)
    cap = 0
    for module in model.modules():
        if isinstance(module, UserHistory):
            module.sample = history_sample(config, sparse=module.table.sparse)
            cap = max(cap, module.sample)
    if cap:
        log.info("%s: histories sampled, at most %d items per user and step", name, cap)
    return model


def history_sample(config: ComponentConfig, *, sparse: bool) -> int:
    """How many items of a user's history a training step sums (0: all of them)."""
    if config.history_sample == "auto":
        return AUTO_HISTORY_SAMPLE if sparse else 0
    if config.history_sample < 0:
        raise ValueError(f"history_sample must be 'auto' or >= 0, not {config.history_sample}")
    return config.history_sample


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
    device: torch.device | str = "cpu",
    compile_step: bool = False,
) -> tuple[TowerScoring, dict[str, Any]]:
    """Trains one component (the `fit` of FuxiCTR's BaseModel) on `device`; the loss
    through `torch.compile` when `compile_step`.

    With `valid` and `config.select == "heads"`, each head is kept at its best validation
    epoch (RMSE for the rating head, NDCG@10 for the towers). Without `valid`,
    `head_epochs` = (rating epoch, ranking epoch) takes each head from the given epoch,
    which is how a refit on all training data reproduces the selected epochs.
    """
    if len(train) == 0:
        raise ValueError(f"cannot train {name}: the training split has no ratings")
    set_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    bayes = bayes_settings(config, fm)
    if bayes is not None:
        # The rating head is sampled after the epochs: Adam trains the towers only.
        config = replace(cast(MFConfig, config), rating_weight=0.0, rating_history=False)
    data = TrainData.build(train, tables, fm, device=device)
    model = training_model(name, fm, config, data, global_mean=float(train.rating.mean()))
    if head_epochs is not None:
        config = replace(config, epochs=max(head_epochs))
    if bayes is not None and config.ranking_weight == 0:
        config = replace(config, epochs=0)  # a refit of the rating head alone
    world = current()
    t = Trainer(
        name=name,
        model=model,
        config=config,
        data=data,
        opt=make_optimizer(model, config),
        gen=gen,
        progress=progress,
        world=world,
    )
    if world.distributed:
        t.objective = wrap(ComponentObjective(t), world)
    if compile_step:
        # Compiling a module gives an OptimizedModule, a module (typed as a callable).
        t.objective = cast(nn.Module, torch.compile(t.objective or ComponentObjective(t)))
    selector = HeadSelector(select=config.select, head_epochs=head_epochs)
    # An empty validation split selects nothing: head_epochs, or the last epoch, then apply.
    valid = valid if valid is not None and len(valid) > 0 else None
    started = time.perf_counter()
    with reproducible(data.device):
        curves = run_epochs(t, selector, fm, tables, train=train, valid=valid)
    last = len(curves)
    epochs_kept = selector.restore(model, last_epoch=last)
    model.fold_history()
    densify_embeddings(model)
    info: dict[str, Any] = {"curves": curves, "head_epochs": epochs_kept}
    if bayes is not None:
        info["bayes_rating"] = _sample_rating_head(cast(BiasedMF, model), data, bayes, world)
        epochs_kept[0] = 0  # the sampled rating head has no epochs
    model.eval()
    info["seconds"] = time.perf_counter() - started
    return model, info


def bayes_settings(config: ComponentConfig, fm: FeatureMap) -> GibbsSettings | None:
    """The Gibbs sampler's settings when this component's rating head is sampled."""
    if not (isinstance(config, MFConfig) and config.bayes_rating and config.rating_weight > 0):
        return None
    if fm.n_items > BAYES_MAX_ITEMS:
        log.info(
            "mf: %d items > %d, the rating head trains with Adam (the sampler's per-item "
            "statistics grow with the catalogue)",
            fm.n_items,
            BAYES_MAX_ITEMS,
        )
        return None
    return GibbsSettings(dim=config.bayes_dim, sweeps=config.bayes_sweeps)


def _sample_rating_head(
    model: BiasedMF, data: TrainData, settings: GibbsSettings, world: World
) -> dict[str, float]:
    """Rank 0 samples MF's rating head; every rank then holds its rows."""
    figures = None
    if world.is_main:
        figures = fit_rating_head(
            model,
            users=data.users,
            items=data.items,
            ratings=data.ratings,
            tables=(data.user_feats, data.item_feats, data.item_genres),
            settings=settings,
        )
    if world.distributed:
        rows = None
        if world.is_main:
            state = model.state_dict().items()
            rows = {k: v.cpu() for k, v in state if k.startswith(RATING_ROWS)}
        figures, rows = broadcast((figures, rows), world)
        model.load_state_dict(cast(dict[str, Tensor], rows), strict=False)
    return cast(dict[str, float], figures)


def run_epochs(
    t: Trainer,
    selector: HeadSelector,
    fm: FeatureMap,
    tables: FeatureTables,
    *,
    train: Ratings,
    valid: Ratings | None,
) -> list[dict[str, float]]:
    """The epochs of one component, each validated when `valid` is given, until the
    configured count or until no head has improved for `config.patience` epochs."""
    model, config, world = t.model, t.config, t.world
    curves: list[dict[str, float]] = []
    for epoch in tqdm(range(config.epochs), desc=t.name, disable=not t.progress, leave=False):
        if selector.stale(epoch, config.patience):
            log.info("%s: no head improved in %d epochs, stopped", t.name, config.patience)
            break
        if config.stop_heads:
            _stop_stale_heads(t, selector, epoch)
        point: dict[str, float] = {"epoch": float(epoch + 1), **train_epoch(t, epoch)}
        metrics = None
        if valid is not None:
            # Rank 0 validates; every rank then keeps the same epochs.
            metrics = broadcast(
                evaluate_component(model, tables, train=train, valid=valid, fm=fm)
                if world.is_main
                else None,
                world,
            )
            point.update({f"valid_{k}": v for k, v in metrics.items() if k != "n_users"})
        selector.observe(model, epoch + 1, metrics)
        curves.append(point)
        log.info(
            "%s epoch %d: %s",
            t.name,
            epoch + 1,
            ", ".join(f"{k}={v:.4f}" for k, v in point.items() if k != "epoch"),
        )
    return curves


def _stop_stale_heads(t: Trainer, selector: HeadSelector, epoch: int) -> None:
    """Turns off the loss of each head that has not improved for `patience` epochs.

    A stopped head's parameters then get no gradient and stay as they are, so its
    validation metric cannot beat its snapshot again; the other head trains on exactly as
    in a joint run (`_refit_tasks` states why), and every rank stops the same heads since
    they all see rank 0's metrics.
    """
    config, patience = t.config, t.config.patience
    if config.rating_weight and selector.head_stale("rating", epoch, patience):
        config = replace(config, rating_weight=0.0)
        log.info("%s: rating head stopped after %d epochs", t.name, epoch)
    if config.ranking_weight and selector.head_stale("ranking", epoch, patience):
        config = replace(config, ranking_weight=0.0)
        log.info("%s: ranking head stopped after %d epochs", t.name, epoch)
    t.config = config


def _selection_split(train: Ratings, config: TeacherConfig) -> tuple[Ratings, Ratings]:
    """(fit, valid): the split the blend and the epochs are chosen on; ValueError naming
    what is missing when nothing could be chosen on it."""
    if not np.any(train.rating >= RELEVANT_MIN_RATING):
        # More data cannot fix this one: the scale is the problem.
        raise ValueError(
            f"no training rating is {RELEVANT_MIN_RATING:g} or more (the highest is "
            f"{float(np.max(train.rating)):g}), and a relevant item is one rated "
            f"{RELEVANT_MIN_RATING:g} or more on the 1-5 scale; for implicit feedback "
            "(clicks, plays, purchases), give each interaction the rating 5"
        )
    fit, valid = holdout(train, fraction=config.valid_fraction, seed=config.seed)
    if len(valid) == 0:
        raise ValueError(
            f"{len(train)} training ratings are too few for a validation split "
            f"({config.valid_fraction:.0%}); use more data"
        )
    if not np.any(valid.rating >= RELEVANT_MIN_RATING):
        raise ValueError(
            f"the validation split ({config.valid_fraction:.0%} of {len(train)} training "
            f"ratings) has no rating >= {RELEVANT_MIN_RATING:g} to fit the ensemble on; "
            "use more data"
        )
    return fit, valid


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
    device = local_device(resolve_device(config.device))
    log.info("teacher trains on %s (%d processes)", device, current().world_size)
    started = time.perf_counter()
    fit, valid = _selection_split(train, config)
    configs: dict[str, ComponentConfig] = {
        "mf": config.mf,
        "xdeepfm": config.xdeepfm,
        "autoint": config.autoint,
    }
    models: dict[str, TowerScoring] = {}
    report: dict[str, Any] = {"config": config.to_dict(), "components": {}}
    tasks = [
        ComponentTask(name, config=configs[name], seed=config.seed + k, valid=valid)
        for k, name in enumerate(COMPONENTS)
    ]
    report["refit_full"] = config.refits(len(train))
    log.info("teacher refit on all %d training ratings: %s", len(train), report["refit_full"])
    refit = Refit(_shared(dataset, train, config), _refit_tasks) if report["refit_full"] else None
    trained, refitted = train_components(
        tasks,
        _shared(dataset, fit, config),
        jobs=_jobs(config, device),
        device=device,
        refit=refit,
    )
    for name, (model, info) in zip(COMPONENTS, trained, strict=True):
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
        workers=rank_cpus(),
        rating_score=config.rating_score_weight,
    )
    report["ensemble"] = weights
    if refit is not None:
        teacher = _refitted(dataset, teacher, refitted, report, valid=valid, seed=config.seed)
    report["seconds"] = time.perf_counter() - started
    report["device"] = str(device)
    teacher.eval()
    # Checkpoints, Fisher and export read the teacher on the CPU.
    return teacher.cpu(), report


def _shared(dataset: Dataset, train: Ratings, config: TeacherConfig) -> SharedInputs:
    return SharedInputs(
        fm=dataset.feature_map,
        tables=dataset.tables,
        train=train,
        progress=config.progress,
        threads=config.threads,
        compile_step=config.compile,
        train_fn=train_component,
        build_fn=build_component,
    )


def _jobs(config: TeacherConfig, device: torch.device) -> int:
    """Component processes, outside torchrun (a rank is one process: torchrun's ranks
    already share the cores or devices). On a GPU only when asked for (`jobs` > 0): auto
    keeps them in turn there until a lent GPU has timed both (bench/gpu.sh)."""
    if current().distributed or (device.type != "cpu" and config.jobs == 0):
        return 1
    return resolve_jobs(config.jobs, threads=config.threads, tasks=len(COMPONENTS))


def _refit_tasks(task: ComponentTask, info: dict[str, Any]) -> list[ComponentTask]:
    """The same component on all training data, a run per head in `refit_heads`, each
    for the epochs its first run selected for that head and with the other head's loss
    weight 0 (not run at all). The heads share no parameters and the random draws do not
    depend on which heads run, so each run's head is the head a joint run would give."""
    epochs = dict(zip(("rating", "ranking"), (int(e) for e in info["head_epochs"]), strict=True))
    heads = tuple(task.config.refit_heads)
    if not heads or set(heads) - set(epochs) or len(set(heads)) != len(heads):
        raise ValueError(f"{task.name}: refit_heads must name rating and/or ranking: {heads}")
    only = {
        "rating": replace(task.config, ranking_weight=0.0),
        "ranking": replace(task.config, rating_weight=0.0),
    }
    return [
        ComponentTask(
            task.name,
            config=only[head],
            seed=task.seed,
            head_epochs=(epochs[head], epochs[head]),
            head=head,
        )
        for head in heads
    ]


def _refitted(
    dataset: Dataset,
    teacher: EnsembleTeacher,
    refitted: list[Refitted],
    report: dict[str, Any],
    *,
    valid: Ratings,
    seed: int,
) -> EnsembleTeacher:
    """The teacher of the refitted components, with the blend fitted on the first run;
    each head from its own refit run, a head outside `refit_heads` from the first run."""
    refit: dict[str, TowerScoring] = {}
    for first, name, runs in zip(teacher.components, COMPONENTS, refitted, strict=True):
        state, seconds = first.state_dict(), {}
        for task, run, info in runs:
            again = run.state_dict()
            rating, ranking = (again, state) if task.head == "rating" else (state, again)
            state = _merge_heads(first, rating, ranking)
            seconds[str(task.head)] = info["seconds"]
        # Into a refit run's model (refit_heads is never empty): the first run's model
        # stays as the blend was fitted on it.
        refit[name] = runs[-1][1]
        refit[name].load_state_dict(state)
        report["components"][name]["refit_seconds"] = seconds
        report["components"][name]["refit_heads"] = list(seconds)
    teacher_all = EnsembleTeacher(refit["mf"], refit["xdeepfm"], refit["autoint"])
    users = np.unique(valid.user)
    most = block_users(dataset.feature_map.n_items)
    if users.size > most:
        # users x catalogue scores per matrix: a small data set can have a large catalogue.
        users = np.sort(np.random.default_rng(seed).choice(users, most, replace=False))
    teacher_all.load_weights_from(teacher, tables=dataset.tables, users=users)
    return teacher_all


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
    workers: int = 1,
    rating_score: float = 0.0,
) -> dict[str, Any]:
    """Fits the blend on the validation split and sets it on `teacher`.

    Rating weights: non-negative least squares with an intercept on the clipped component
    predictions. Score weights: the grid point on the simplex with the best validation
    NDCG@10 (ties go to the point nearest the default weights), the grid ranked by
    `workers` threads. The weight of MF's rating in the score, `rating_score`, is set as
    given, not fitted here: on the split that picked the score weights nothing added to
    them can look better, so it was chosen on held-back data (`TeacherConfig`).
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

    users = _ranked_users(valid, n_items=fm.n_items, max_users=max_users, seed=seed)
    ranking, lists = _blend_ranking(teacher, tables, users, fit=fit, valid=valid, fm=fm)
    started = time.perf_counter()
    score_w = _best_score_weights(ranking, step=step, default=default, workers=workers)
    log.info(
        "ensemble weights: %d grid points ranked in %.1f s, %d of %d user rankings over "
        "the whole catalogue",
        len(simplex_grid(step)),
        time.perf_counter() - started,
        sum(lists.full_rows),
        sum(lists.rows),
    )
    teacher.set_weights(
        rating=rating_w.tolist(),
        rating_bias=rating_b,
        score=score_w.tolist(),
        rating_score=rating_score,
    )

    def blend(rating: np.ndarray, bias: float, score: np.ndarray, g: float = 0.0) -> dict[str, Any]:
        return {
            "rating_weights": rating.tolist(),
            "rating_bias": bias,
            "score_weights": score.tolist(),
            "rating_score_weight": g,
            **rating_metrics(preds @ rating + bias, y, scale=fm.rating_scale),
            **_ranking_only(ranking(score, g)),
        }

    return {
        "default": blend(default, 0.0, default),
        "fitted": blend(rating_w, rating_b, score_w),
        "teacher": blend(rating_w, rating_b, score_w, rating_score),
        "valid_users": int(users.size),
    }


def _ranked_users(valid: Ratings, *, n_items: int, max_users: int, seed: int) -> np.ndarray:
    """The validation users who liked an item that the weight search ranks: at most
    `max_users` and `search_users(n_items)`, a seeded sample beyond; in a random order
    when they take several blocks, since the first block standardises the teacher."""
    users = np.unique(valid.user[valid.rating >= 4.0])
    rng = np.random.default_rng(seed)
    max_users = min(max_users, search_users(n_items))
    if users.size > max_users:
        log.info("ensemble weights: ranking %d of %d validation users", max_users, users.size)
        users = np.sort(rng.choice(users, max_users, replace=False))
    block = block_users(n_items)
    if users.size > block:
        users = rng.permutation(users)
        log.info("ensemble weights: %d users scored in blocks of %d", users.size, block)
    return users


def _blend_ranking(
    teacher: EnsembleTeacher,
    tables: FeatureTables,
    users: np.ndarray,
    *,
    fit: Ratings,
    valid: Ratings,
    fm: FeatureMap,
) -> tuple[Callable[[np.ndarray, float], dict[str, float]], BlendTopK]:
    """(score weights, weight of MF's rating) -> validation ranking metrics of the
    blend over `users`; and the lists it ranks with.

    Scores each component and MF's rating once, standardises the teacher on them
    (training/blend_scores.py), and keeps each user's candidates; every weight vector then
    ranks each user's blend among them (training/blend_topk.py: the same lists as over
    the catalogue).
    """
    row_of = np.full(fm.n_users + 1, -1, dtype=np.int64)
    row_of[users] = np.arange(users.size)
    sub_valid = valid.subset(np.isin(valid.user, users))
    seen = SeenIndex.from_ratings(fit, n_users=fm.n_users, n_items=fm.n_items)
    lists = BlendTopK(TeacherScores(teacher, tables, users), users, seen)

    def ranking(w: np.ndarray, g: float = 0.0) -> dict[str, float]:
        weights = np.append(w, g) if g else np.asarray(w, np.float64)
        return top_k_metrics(
            lambda us: lists.top(weights, row_of[us]),
            test=sub_valid,
            n_users=fm.n_users,
            n_items=fm.n_items,
        )

    return ranking, lists


def _best_score_weights(
    ranking: Callable[[np.ndarray, float], dict[str, float]],
    *,
    step: float,
    default: np.ndarray,
    workers: int = 1,
) -> np.ndarray:
    """The simplex grid point with the best NDCG@10; ties go to the one nearest `default`.

    The points are ranked independently, so threads rank them side by side (numpy's
    blends and partitions release the GIL) for the same values, compared in grid order:
    the teacher step's parent runs this on one torch thread after the component
    processes end, while the other cores idle.
    """
    points = simplex_grid(step)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        values = list(pool.map(lambda p: ranking(np.asarray(p), 0.0)["ndcg@10"], points))
    best: tuple[float, float, tuple[float, ...]] | None = None
    for point, value in zip(points, values, strict=True):
        w = np.asarray(point)
        key = (value, -float(np.abs(w - default).sum()), point)
        if best is None or key[:2] > best[:2]:
            best = key
    assert best is not None
    return np.asarray(best[2])


def _ranking_only(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k != "n_users"}
