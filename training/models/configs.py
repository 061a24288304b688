"""Configuration of each teacher component: its architecture and its optimisation.

Plain dataclasses, no torch: each model is built from its config by its `from_config`
(training/models/{mf,xdeepfm,autoint}.py); the optimisation fields are read by
training/train.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Select = Literal["heads", "last"]
Head = Literal["rating", "ranking"]


@dataclass
class ComponentConfig:
    """Optimisation settings shared by every component."""

    epochs: int = 20
    batch_size: int = 1024
    lr: float = 2e-3
    tower_lr: float = 0.0  # learning rate of the ranking towers; 0 = same as lr
    rating_l2: float = 0.0  # per-example L2 on the rows the rating head used
    tower_l2: float = 0.0  # per-example L2 on the user and positive-item tower outputs
    rating_weight: float = 1.0
    ranking_weight: float = 1.0
    n_negatives: int = 256  # 0 = the whole catalogue
    # Catalogues of at most this many items get an exact softmax over every item instead of
    # n_negatives sampled ones: on ml-100k's held-back validation data it raised every
    # component's NDCG@10 on every fold tried, at 1.4-1.9x the training time
    # (bench/results/negatives.md; docs/SCALE.md item 18 has since made its steps
    # 1.24-1.35x faster), and the teacher's on the test folds
    # (bench/results/exact-softmax/). A step then costs the catalogue's size, so larger
    # catalogues keep the sampled softmax, whose cost does not grow with them.
    exact_softmax_items: int = 2048
    # Models with a user-history term (MFConfig.history, XDeepFMConfig.history): a training
    # step sums at most this many items of each user's history, drawn uniformly and scaled
    # to the whole history's sum in expectation; evaluation and the exported towers sum
    # them all. "auto": 128 where the history's item table is sparse (catalogues of at
    # least training.sparse.SPARSE_MIN_ROWS items), whose step otherwise moves every
    # history row of the batch's heavy users (docs/SCALE.md item 31); the whole history
    # below that. 0: always the whole history.
    history_sample: int | Literal["auto"] = "auto"
    # Weight in the ranking loss of positives rated below 4: protocol P counts only items
    # rated >= 4 as relevant, so a watched-but-disliked item is a weaker positive.
    low_rating_weight: float = 0.3
    id_dropout: float = 0.05
    # "heads": keep the rating head of the epoch with the best validation RMSE and the
    # ranking towers of the epoch with the best validation NDCG@10; "last": the last epoch.
    select: Select = "heads"
    # With "heads": stop once neither head has improved for this many epochs (0: run every
    # epoch). The epochs kept are then those a full run keeps unless a head improves again
    # after such a plateau; on ML-1M-sized data xDeepFM's best epochs came at 3 and 6 of 20.
    patience: int = 4
    # Each head also stops on its own after `patience` epochs without a new best: its loss
    # is then off (not run), as if it trained alone, while the other head trains on
    # exactly as before (no shared parameters, draws independent of the heads). False:
    # both heads train until neither improves. On held-back data of u1-u5 MF and xDeepFM
    # kept the same epochs either way, at 0.92x and 0.96x the time
    # (bench/results/stop-heads.md); AutoInt's heads improve again after such plateaus.
    stop_heads: bool = True
    # The heads a refit on all training data (TeacherConfig.refit_full) trains again; the
    # others keep their first run's parameters. The heads share no parameters, so each
    # head refits in a run of its own (its loss alone, for its own selected epochs).
    refit_heads: tuple[Head, ...] = ("rating", "ranking")


@dataclass
class MFConfig(ComponentConfig):
    dim: int = 64
    score_dim: int = 64
    epochs: int = 20
    lr: float = 3e-3
    rating_l2: float = 0.05
    # Ten times the towers' penalty of MF without the history term, which overfits sooner
    # (bench/results/mf-history.md compares the two on validation splits).
    tower_l2: float = 1e-2
    rating_weight: float = 0.5  # ranking emphasis
    ranking_weight: float = 1.0
    # The ranking user vector also sums the user's training items (SVD++'s implicit term,
    # models/layers.py::UserHistory), scaled by |N(u)|^-history_alpha as in SVD++.
    history: bool = True
    history_alpha: float = 0.5
    rating_history: bool = True  # the same term in the rating factor p_u, as in SVD++
    # The rating head as the mean of a Gibbs sampler's draws (Bayesian MF with a prior per
    # field, training/bayes_rating.py) instead of Adam's point estimate; Adam then trains
    # the ranking towers only, and the SVD++ term above is not used by the rating head.
    # On held-back data of u1-u5 it lowered MF's RMSE by 0.0114 (5 of 5 folds; the towers
    # unchanged) at 3.6x MF's time with the slower Gram sums of then
    # (bench/results/bayes-rating.md).
    bayes_rating: bool = True
    bayes_dim: int = 16  # the rank of each draw; the mean is compressed to `dim`
    bayes_sweeps: int = 400


@dataclass
class XDeepFMConfig(ComponentConfig):
    dim: int = 16
    # Two CIN layers of 32: (64, 64) costs about 3x the time per batch on this CPU and was
    # no better on validation over the epochs we could afford to compare.
    cin_layers: tuple[int, ...] = (32, 32)
    dnn_layers: tuple[int, ...] = (128, 64)
    # The DNN's rating fit peaks around epoch ten of twenty; dropout keeps it from
    # overfitting until the ranking towers, which keep improving, are done.
    dropout: float = 0.2
    score_dim: int = 64
    tower_layers: tuple[int, ...] = (128,)
    # The user tower's output also sums the user's training items, as MF's ranking vector
    # does (MFConfig.history), with ten times the towers' penalty it had without them. On
    # held-back data of u1-u5: NDCG@10 +0.0090 (5 of 5 folds), Recall@10 +0.0097 (4 of 5)
    # at 0.96x the time (bench/results/xdeepfm-history.md).
    history: bool = True
    history_alpha: float = 0.5
    epochs: int = 20
    tower_lr: float = 5e-3  # the MLP towers start slower than MF's plain embeddings
    rating_l2: float = 0.01
    tower_l2: float = 1e-2
    rating_weight: float = 1.0  # rating emphasis
    ranking_weight: float = 0.5
    # On held-back training data the refit improved the rating head (RMSE -0.004, 4 of 5
    # folds) but not the towers (NDCG@10 -0.002, 2 of 5): bench/results/refit.md.
    refit_heads: tuple[Head, ...] = ("rating",)


@dataclass
class AutoIntConfig(ComponentConfig):
    dim: int = 16
    layers: int = 3
    heads: int = 2
    d_head: int = 16
    score_dim: int = 64
    tower_layers: int = 1
    epochs: int = 20
    # With the exact softmax, 5e-3 left the towers' best epoch at the last one on several
    # folds; 1e-2 raised held-back NDCG@10 by 0.0068 and Recall@10 by 0.0109 in 8 of 9
    # fold-seed pairs at 0.92x the time, 2e-2 lowered both on every fold
    # (bench/results/autoint-tower-lr.md, autoint-tower-lr-2.md; python -m bench.variants).
    tower_lr: float = 1e-2
    rating_l2: float = 0.01
    tower_l2: float = 1e-3
    rating_weight: float = 1.0  # balanced
    ranking_weight: float = 1.0
    # Its heads often improve again after four epochs without a new best, which a joint
    # run still sees: stopped alone, they lost held-back NDCG@10 0.0025 and RMSE 0.0009
    # (4 of 5 folds kept other epochs; bench/results/stop-heads.md).
    stop_heads: bool = False
