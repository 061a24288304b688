"""The student run's configuration: widths, pruning schedule, list sizes and loss weights."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from training.models.student import StudentShape
from training.prune import Method

# Scores per batch (lists x catalogue items) up to which "auto" distils rankings over the
# whole catalogue: 64 lists x 20,000 items. Beyond, a step's forward and backward over the
# catalogue costs more than the rest of it many times over (docs/SCALE.md).
KD_CATALOGUE_CELLS = 64 * 20_000


@dataclass
class StudentConfig:
    """Everything that defines a student run; `quick` shrinks it for tests."""

    shape: StudentShape = field(default_factory=StudentShape)
    # "teacher": scale `shape` so that the unpruned student has the teacher's parameter
    # count (then prune_ratio is exactly the share of parameters removed); "shape": as given.
    initial: Literal["teacher", "shape"] = "teacher"
    # Widest score head the student may have. Its score factors (plus one bias column) are
    # the retrieval vectors the service stores per item and searches per request, so they
    # are kept far below the teacher's (260 with the default teacher) rather than scaled
    # up with the other widths. 16, with the score path held at the teacher's best rank-16
    # factorisation (`hold_score_path`) and that rank kept by `min_score_rank`: the rank-16
    # projection of the teacher's score matrix keeps 0.992 of its held-back NDCG@10
    # (bench/results/student-split/head-rank.md), and on held-back u1-u3 (two seeds each)
    # the 9% student's NDCG@10 ratio was 0.985-0.996 per fold (the defaults, `v9_tiers`)
    # where the one-block student capped at 48 had 0.968-0.975 (bench/results/student-split/).
    max_score_factor: int = 16
    # Widest rating head the student may have. With `score_rating = "mirror"` the rating
    # factors are in the retrieval vectors as well; on large catalogues, where item
    # embeddings hold nearly all the parameters, pruning keeps almost every factor (one
    # costs a few hundred parameters against a million for an embedding dimension), so
    # without a cap the student's vectors would grow towards the teacher's. 32, the base
    # shape's width: on the held-back cells above the capped student's NDCG@10 ratio was
    # 0.976 against 0.979 uncapped and its RMSE ratio 1.0035 against 1.0049 (at ml-100k
    # pruning ends at 11-25 rating factors either way).
    max_rating_factor: int = 32
    # Share of the *teacher's* parameters the student must lose: 0.91 leaves 9% of them and
    # about 9% of the ONNX bytes (the file is mostly weights), under issue 15's 10%, where
    # from the spectral start the student kept the teacher's NDCG@10 and RMSE within the
    # issue's bounds on every fold and seed (docs/student.md; 0.8 until then).
    prune_ratio: float = 0.91
    prune: bool = True
    method: Method = "fisher"
    # 13 epochs, the last 6 fine-tuning the final shape: from the spectral start, on
    # held-back u1 and u2 at 9% of the teacher's parameters, the NDCG@10 ratio went from
    # 0.985 and 0.947 (10 and 3) to 1.005 and 0.974, the RMSE ratio down by 0.001
    # (bench/results/student-tuning/, runs e18 and e19).
    epochs: int = 13
    prune_start: int = 2  # epochs of plain distillation before the first pruning step
    prune_steps: int = 5
    finetune_epochs: int = 6
    # The learning rate over the fine-tune epochs falls on a cosine, step by step, from
    # `lr` to `finetune_lr_end` x `lr`. 1.0, constant: on held-back u1-u3 (two seeds) a
    # decay to 0.1 moved the 9% student's NDCG@10 ratio by -0.004, inside the seeds'
    # spread (bench/results/student-losses-20261205/).
    finetune_lr_end: float = 1.0
    lists_per_batch: int = 64
    # Optimiser steps per epoch, at most (0: no cap), in catalogue scope. Every step there
    # runs the item tower over the whole catalogue, so an epoch of many more lists than
    # ml-100k's (about 100 steps, where this schedule was tuned) spends most of its time
    # repeating that pass: three quarters of the ML-1M-shaped set's 826 steps an epoch
    # (docs/SCALE.md item 22). Above the cap batches grow to fit it (`batch_plan`).
    max_epoch_steps: int = 200
    list_positives: int = 16
    list_negatives: int = 96
    # Items per list (the first ones) that get the teacher's full per-pair forward for
    # rating and feature distillation; ranking distillation covers the whole list.
    kd_items: int = 32
    lr: float = 3e-3
    l2: float = 1e-5  # on the embedding rows a batch uses
    # Ranking over rating: on held-back training data of u1 and u2 (bench.student
    # --holdout; bench/results/student-tuning/) 0.6/0.2 raised the student's NDCG@10 ratio
    # to the teacher by 0.03-0.04 at 9% of its parameters and by 0.006-0.019 at 20%, on
    # both folds, for an RMSE ratio at most 0.001 above 0.4/0.4's; 0.7/0.1 and a longer
    # fine-tune added nothing on top. With the score path held (`hold_score_path`) the
    # ranking no longer competes for the rating's dimensions, and 0.5 brought the held-back
    # RMSE ratio from 1.0098 / 1.0079 / 1.0080 (u1-u3, 0.2) to 1.0079 / 1.0048 / 1.0080 for
    # an NDCG@10 ratio of 0.980-0.994 (0.988-1.002 at 0.2); at 1.0 u3's fell to 0.964
    # (bench/results/student-split/).
    w_rating_kd: float = 0.5
    w_ranking_kd: float = 0.6
    w_feature_kd: float = 0.2
    # The ground truth gets a small weight: the teacher's targets carry more than the
    # labels they were fitted to; bench.student's ablations compare 0.2 and 0 with it.
    w_ground_truth: float = 0.05
    # Relaxed ranking distillation of the teacher's top `topk_kd_items` (losses.topk_ranking_kd;
    # catalogue scope only). Off: on held-back u1 and u2 at 9% of the teacher's parameters it
    # bought NDCG@10 only with RMSE above 1.01x the teacher's (docs/student.md), since the
    # rating and score heads share the student's few embedding dimensions.
    w_topk_kd: float = 0.0
    topk_kd_items: int = 20
    # Squared error of the student's centred catalogue scores against the teacher's
    # (losses.catalogue_score_kd; catalogue scope only). Off at the default size: on
    # held-back u1-u3 (four seeds, paired) weight 1.0 moved the 9% student's NDCG@10 ratio
    # by +0.009 (95% interval -0.002 to +0.019). For larger students it is the lever,
    # with `w_ground_truth = 0`: mean NDCG@10 0.2108 -> 0.2220 unpruned and 0.2114 ->
    # 0.2208 at 30% of the teacher's parameters (teacher 0.2239), RMSE lower as well
    # (bench/results/student-losses-20261205/).
    w_score_kd: float = 0.0
    # The teacher's blended scores are standardised (unit variance over the catalogue):
    # T = 1 keeps its top items distinct, which is where NDCG@10 is decided.
    temperature: float = 1.0
    # "spectral": the score path starts at the best low-rank factorisation of the teacher's
    # score matrix (training/student_init.py); "random": from scratch, like the rest.
    score_init: Literal["random", "spectral"] = "spectral"
    # With the spectral start, the score path stays the teacher's factorisation through
    # training: distillation trains the rest, and pruning a score dimension or factor
    # truncates the factorisation (training/student_init.py). On held-back u1-u3 (two
    # seeds each) the held path, with the rank floor below and a cap of 16, ranked at
    # 0.980-1.002x the teacher's NDCG@10 per fold; trained from the same start (cap 48,
    # mirrored), at 0.965-0.977x (bench/results/student-split/).
    hold_score_path: bool = True
    # How the student ranks with the rating, when the teacher's score adds MF's rating
    # (TeacherConfig.rating_score_weight g > 0). "mirror": as the teacher does, its score
    # head distils the teacher's score without that term, and the student then ranks with
    # g x its own standardised rating on top (its rating head distils the teacher's
    # rating); "distil": its score head distils the teacher's whole score, and the
    # spectral start factorises the whole score. "distil" since the score path is held:
    # the factorisation then is the ranking, and the retrieval vectors stay 17 wide.
    # (With the one-block student, mirroring had raised the held-back NDCG@10 ratio in
    # all six fold-seed cells at a cap of 48; bench/results/student-mirror/.)
    score_rating: Literal["mirror", "distil"] = "distil"
    # "catalogue": ranking distillation over every item the user has not rated in
    # training, which is the ranking protocol P scores; "list": over the sampled list only
    # (for teachers without two-tower scores, or catalogues too large to score per batch);
    # "auto": "catalogue" while a batch scores at most KD_CATALOGUE_CELLS (lists x items),
    # else "list" (see `kd_scope`).
    ranking_kd_scope: Literal["auto", "catalogue", "list"] = "auto"
    importance_examples: int = 512
    fisher_examples: int = 256
    fisher_chunk: int = 16
    teacher_pools: int = 2  # distinct list samplings whose teacher outputs are cached
    min_units: int = 2
    # Pruning leaves each side's rating block at least this many dimensions, while the
    # size target allows. 2 (min_units): at 9% of the teacher's parameters, with the score
    # blocks held at 16, a floor of 6 left the rating head 2 factors and 2 hidden neurons
    # a side, and the held-back RMSE ratio went to 1.043-1.046 (bench/results/student-split/).
    min_rating_dims: int = 2
    # Pruning leaves the score path at least this rank: each side's score dimensions and
    # the score factors (with `hold_score_path`, the factorisation's rank). Fisher
    # importance on the distillation objective weighs the two heads by their losses, not
    # by the bounds: without a floor it took the held score path's rank to 8-12
    # and the held-back NDCG@10 ratio to 0.946-0.984 (bench/results/student-split/).
    min_score_rank: int = 16
    quick: bool = False
    seed: int = 0
    threads: int = 1
    progress: bool = True
    device: str = "cpu"  # "auto" | "cpu" | "cuda" (training.device); not part of run keys

    def effective(self) -> StudentConfig:
        """The configuration actually run: `quick` caps the work for tests and smoke runs."""
        if not 0.0 <= self.prune_ratio < 1.0:
            raise ValueError(f"prune_ratio must lie in [0, 1), got {self.prune_ratio}")
        if not 0.0 <= self.finetune_lr_end <= 1.0:
            raise ValueError(f"finetune_lr_end must lie in [0, 1], got {self.finetune_lr_end}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        weights = (
            self.w_rating_kd,
            self.w_ranking_kd,
            self.w_feature_kd,
            self.w_ground_truth,
            self.w_topk_kd,
            self.w_score_kd,
        )
        if min(weights) < 0:
            raise ValueError("loss weights must be non-negative")
        if not self.quick:
            return self
        return replace(
            self,
            epochs=min(self.epochs, 6),
            prune_start=1,
            prune_steps=min(self.prune_steps, 2),
            finetune_epochs=min(self.finetune_epochs, 2),
            lists_per_batch=min(self.lists_per_batch, 16),
            importance_examples=min(self.importance_examples, 64),
            fisher_examples=min(self.fisher_examples, 32),
            teacher_pools=1,
        )

    def kd_scope(self, n_items: int) -> Literal["catalogue", "list"]:
        """The ranking distillation scope run on a catalogue of `n_items` items."""
        if self.ranking_kd_scope != "auto":
            return self.ranking_kd_scope
        fits = self.lists_per_batch * n_items <= KD_CATALOGUE_CELLS
        return "catalogue" if fits else "list"

    def batch_plan(self, n_lists: int, n_items: int) -> tuple[int, float]:
        """Lists per training batch and the learning rate, for epochs of `n_lists` lists
        (this rank's) on a catalogue of `n_items` items.

        `lists_per_batch` and `lr` unless an epoch would take more than `max_epoch_steps`
        catalogue-scope steps; then the fewest lists per batch that fit the cap, with the
        catalogue scores of a batch still within KD_CATALOGUE_CELLS, and the learning rate
        times the square root of the batch's growth (the square-root rule for Adam).
        """
        base = self.lists_per_batch
        if self.max_epoch_steps <= 0 or self.kd_scope(n_items) != "catalogue":
            return base, self.lr
        wanted = -(-n_lists // self.max_epoch_steps)
        lists = max(base, min(wanted, KD_CATALOGUE_CELLS // max(n_items, 1)))
        return lists, self.lr * math.sqrt(lists / base)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = self.shape.as_dict()
        return out
