"""MF's rating head fitted by Gibbs sampling and averaged over the draws (Bayesian MF).

Why: an SGD or Adam fit of MF's rating is a point estimate, tuned by early stopping and
one L2 weight for every row. Averaging the model over the posterior instead (BPMF,
Salakhutdinov & Mnih 2008; libFM's MCMC, Rendle 2012, with a prior per group of rows) is
what the best-tuned rating baselines on MovieLens do (Rendle et al. 2019), with no
learning rate, no epochs and the regularisation learnt per field. No maintained library
samples this model with side features on torch, hence this module.

The model is MF's rating head (training/models/mf.py): r = mu + b_u + b_i + p_u . q_i,
where [p_u, b_u] sums one row per user-side field (the user id, then each user field) and
[q_i, b_i] one row per item-side field (the item id, each item field) plus the genre
bag's mean of genre rows. Each field's rows share a Gaussian prior whose mean and
precision have a Normal-Wishart hyperprior; the noise precision has a Gamma prior.

Block Gibbs: no rating touches two rows of one single-valued field, so a field's rows are
drawn together; their sufficient statistics are sums over users (or items) of per-user
Gram matrices, computed once per half-sweep, so a field costs O(users) and not O(ratings).
Genre rows share ratings and are drawn one genre at a time.

The posterior mean of the interaction, (1/S) sum_s A_s B_s^T over S draws of the user-
and item-side rows, has a rank up to S x dim; it is compressed to the model's factor
dimension with a single-pass randomised sketch (Tropp et al. 2017, "Practical sketching
algorithms for low-rank matrix approximation"), which needs no draw kept. Compression acts
on the rows, so every user and item, cold ones included, keeps the field structure.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from training.models.layers import FieldEmbedding
from training.models.mf import BiasedMF

log = logging.getLogger(__name__)

# Weak priors (BPMF's): the hyperprior's mean 0, scale matrix I and nu0 = dim+1, and the
# noise precision's Gamma(1, 1); the data dominate them for every field that has ratings.
HYPER_BETA = 2.0
NOISE_SHAPE = 1.0
NOISE_RATE = 1.0
# Above this many items the rating head trains with Adam: the per-item Gram matrices and
# the sketch cost about 5 kB per item (2.3 GB each at 10^6 items in float64).
BAYES_MAX_ITEMS = 250_000
RATING_ROWS = ("factors.", "biases.")  # the state-dict prefixes of MF's rating head


@dataclass(frozen=True)
class GibbsSettings:
    """How the rating head is sampled (`MFConfig.bayes_rating`)."""

    dim: int = 16  # the rank of each draw
    sweeps: int = 400
    min_sweeps: int = 40
    # Sweeps x training ratings at most: large logs get fewer sweeps (at least
    # `min_sweeps`), since each sweep costs a pass over the ratings.
    max_visits: float = 4e7
    burn_in: float = 0.2  # share of the sweeps discarded before averaging

    def schedule(self, n_ratings: int) -> tuple[int, int]:
        """(sweeps, burn-in sweeps) for a training set of `n_ratings`."""
        budget = int(self.max_visits // max(n_ratings, 1))
        sweeps = min(self.sweeps, max(self.min_sweeps, budget))
        return sweeps, int(sweeps * self.burn_in)


@dataclass
class Layout:
    """Which rows of the factor table each user and item sums (FieldEmbedding's offsets)."""

    user_rows: Tensor  # long [n_users+1, Fu+1]: table rows of each user-side field
    item_rows: Tensor  # long [n_items+1, Fi+1]
    genre_weights: Tensor  # float64 [n_items+1, G]: the bag's mean as weights
    user_fields: list[tuple[int, int]]  # (first row, rows) of each user-side field
    item_fields: list[tuple[int, int]]
    n_user_rows: int  # table rows [0, n_user_rows) are user-side, the rest item-side

    @classmethod
    def build(
        cls, emb: FieldEmbedding, user_feats: Tensor, item_feats: Tensor, item_genres: Tensor
    ) -> Layout:
        n_users, n_items = user_feats.shape[0], item_feats.shape[0]
        dev = user_feats.device
        users = torch.arange(n_users, device=dev).unsqueeze(1)
        items = torch.arange(n_items, device=dev).unsqueeze(1)
        user_rows = torch.cat([users, user_feats.long()], dim=1) + emb.user_offsets
        item_rows = torch.cat([items, item_feats.long()], dim=1) + emb.item_offsets
        bounds = [*emb.user_offsets.tolist(), *emb.item_offsets.tolist()]
        bounds.append(emb.table.num_embeddings)
        spans = [(a, b - a) for a, b in pairwise(bounds)]
        genres = item_genres.double()
        count = genres.sum(dim=1, keepdim=True).clamp(min=1.0)
        n_user_side = emb.user_offsets.numel()
        return cls(
            user_rows=user_rows,
            item_rows=item_rows,
            genre_weights=genres / count,
            user_fields=spans[:n_user_side],
            item_fields=spans[n_user_side:],
            n_user_rows=int(emb.item_offsets[0]),
        )


@dataclass
class Draw:
    """One state of the chain: every table row and genre row as [vector, bias]."""

    rows: Tensor  # float64 [table rows, d+1]
    genres: Tensor  # float64 [G, d+1]
    noise: float  # precision of the rating noise


def posterior_draw(
    gram: Tensor,  # [R, k, k]: sum of x x^T over each row's ratings (weighted)
    rhs: Tensor,  # [R, k]: sum of x y
    mean: Tensor,  # [k]: the prior's mean
    precision: Tensor,  # [k, k]: the prior's precision
    noise: float,
) -> Tensor:
    """A draw of each row from its Gaussian conditional: precision P + a G, mean
    (P + a G)^-1 (P m + a h). Torch's global generator (seeded by the caller)."""
    rows = torch.arange(gram.shape[0], device=gram.device)
    return draw_rows(gram, rhs, rows, gram.shape[0], mean=mean, precision=precision, noise=noise)


def draw_rows(
    gram: Tensor,  # [U, k, k]: the Gram sums of the rows `used`
    rhs: Tensor,  # [U, k]
    used: Tensor,  # long [U]: the rows that have ratings, ascending
    size: int,  # rows in all
    *,
    mean: Tensor,
    precision: Tensor,
    noise: float,
) -> Tensor:
    """`posterior_draw` of `size` rows of which only `used` have ratings: [size, k].

    A row without ratings has G = 0 and h = 0, so its conditional is the prior, whose
    Cholesky factor every such row shares: one factorisation instead of one per row (on a
    large catalogue with few ratings per item most item rows have none; docs/SCALE.md
    item 36). The random numbers are drawn for every row in row order, as one
    `posterior_draw` over all rows draws them, and each row's arithmetic is the same, so
    the draws are too.
    """
    k = precision.shape[0]
    z = normal(torch.empty(size, k, 1, dtype=precision.dtype, device=precision.device))
    prec = precision.unsqueeze(0) + noise * gram  # [U, k, k]
    chol = torch.linalg.cholesky(prec)  # [U, k, k]
    lin = (precision @ mean).unsqueeze(0) + noise * rhs  # [U, k]
    mu = torch.cholesky_solve(lin.unsqueeze(2), chol)  # [U, k, 1]
    # chol^T x = z gives x with covariance prec^-1.
    out = torch.empty(size, k, dtype=precision.dtype, device=precision.device)
    out[used] = (mu + torch.linalg.solve_triangular(chol.mT, z[used], upper=True)).squeeze(2)
    rest = torch.ones(size, dtype=torch.bool, device=precision.device)
    rest[used] = False
    if bool(rest.any()):
        n_rest = int(rest.sum())
        prior = torch.linalg.cholesky(precision.unsqueeze(0))  # [1, k, k]
        centre = torch.cholesky_solve((precision @ mean).view(1, k, 1), prior)  # [1, k, 1]
        step = torch.linalg.solve_triangular(prior.mT.expand(n_rest, k, k), z[rest], upper=True)
        out[rest] = (centre + step).squeeze(2)
    return out


def hyper_draw(rows: Tensor) -> tuple[Tensor, Tensor]:
    """(mean, precision) of a field's prior from its Normal-Wishart posterior given `rows`."""
    n, k = rows.shape
    eye = torch.eye(k, dtype=rows.dtype, device=rows.device)
    if n == 0:
        return torch.zeros_like(eye[0]), eye
    bar = rows.mean(dim=0)
    centred = rows - bar
    beta = HYPER_BETA + n
    scale_inv = eye + centred.T @ centred + (HYPER_BETA * n / beta) * torch.outer(bar, bar)
    precision = _wishart(torch.linalg.inv(scale_inv), df=k + n)
    cov_chol = torch.linalg.cholesky(torch.linalg.inv(beta * precision))
    return n * bar / beta + cov_chol @ normal(bar), precision


def _wishart(scale: Tensor, *, df: int) -> Tensor:
    """A Wishart(scale, df) draw by Bartlett's decomposition."""
    k = scale.shape[0]
    chol = torch.linalg.cholesky((scale + scale.T) / 2)
    dof = df - torch.arange(k, dtype=scale.dtype)
    chi2 = torch.distributions.Chi2(dof).sample().to(scale.device)  # [k]
    lower = normal(scale).tril(-1)
    ca = chol @ (lower + torch.diag(chi2.sqrt()))
    return ca @ ca.T


def normal(like: Tensor) -> Tensor:
    """Standard normal draws shaped like `like`, drawn on the CPU so that a chain on a GPU
    uses the same random numbers as on the CPU (one seeded generator)."""
    return torch.randn(like.shape, dtype=like.dtype).to(like.device)


class Incidence:
    """The training ratings as a sparse [entities, other side] matrix (rows: users, or
    items), in CSR form, built once per chain (also the items' genre pairs: `genre_pairs`).
    Only entities with ratings (`rows`) and other-side entities rated (`cols`) take part:
    on a large catalogue with few ratings per item most items have none.

    Why: a side's sufficient statistics sum, per user (item), a function of the other
    side's vector over the user's ratings. Gathering those vectors per rating and adding
    per-rating outer products into the users' rows (index_add) was most of a sweep; one
    sparse-dense product with the other side's per-entity outer products halves the sweep
    (docs/SCALE.md item 28).
    """

    def __init__(self, index: Tensor, other: Tensor) -> None:
        self.order = torch.argsort(index, stable=True)  # [N]: the ratings by entity
        counts = torch.bincount(index)
        self.rows = torch.nonzero(counts).squeeze(1)  # [A]: entities with ratings, ascending
        self.crow = torch.cat([counts.new_zeros(1), counts[self.rows].cumsum(0)])  # [A+1]
        cols, self.col = torch.unique(other[self.order], return_inverse=True)  # [C], [N]
        self.cols = cols  # other-side entities rated, ascending

    def matmul(self, values: Tensor, dense: Tensor) -> Tensor:
        """[A, m]: per entity of `rows`, the sum over its ratings r of values[r] times
        r's other-side entity's row of `dense` ([C, m], one row per entry of `cols`)."""
        with warnings.catch_warnings():
            # torch marks CSR tensors beta; the product used here is a stable kernel.
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            matrix = torch.sparse_csr_tensor(
                self.crow,
                self.col,
                values[self.order],
                size=(self.rows.numel(), self.cols.numel()),
                check_invariants=False,
            )
        return matrix @ dense


def gram_stats(incidence: Incidence, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Per entity e of `incidence.rows`: the sums of x x^T and of x y over e's ratings,
    where x [n_other, k] is each other-side entity's feature vector and y [N] each
    rating's target."""
    x = x[incidence.cols]  # [C, k]: only the entities rated
    k = x.shape[1]
    outer = (x.unsqueeze(2) * x.unsqueeze(1)).reshape(x.shape[0], k * k)  # [C, k*k]
    gram = incidence.matmul(torch.ones_like(y), outer).view(-1, k, k)  # [A, k, k]
    return gram, incidence.matmul(y, x)  # [A, k, k], [A, k]


class MeanSketch:
    """Sketches of the mean of A_s B_s^T over draws s, for a rank-r approximation of it
    without keeping any draw (Tropp et al. 2017, algorithm 7 with a final truncation)."""

    def __init__(self, n_a: int, n_b: int, rank: int, *, device: torch.device) -> None:
        r = min(2 * rank + 16, n_a, n_b)
        self.omega = torch.randn(n_b, r, dtype=torch.float64).to(device)
        self.psi = torch.randn(n_a, min(2 * r + 1, n_a), dtype=torch.float64).to(device)
        self.y = torch.zeros(n_a, r, dtype=torch.float64, device=device)  # A B^T omega
        self.w = torch.zeros(self.psi.shape[1], n_b, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, a: Tensor, b: Tensor) -> None:
        self.y += a @ (b.T @ self.omega)  # [n_a, r]
        self.w += (self.psi.T @ a) @ b.T  # [l, n_b]
        self.count += 1

    def factors(self, rank: int) -> tuple[Tensor, Tensor]:
        """P [n_a, rank], Q [n_b, rank] with P Q^T the best rank-`rank` fit the sketch
        gives of the mean (zero columns past the sketch's rank)."""
        q, _ = torch.linalg.qr(self.y / self.count)  # [n_a, r]
        x = torch.linalg.lstsq(self.psi.T @ q, self.w / self.count).solution  # [r, n_b]
        u, s, vt = torch.linalg.svd(x, full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt()
        p = torch.zeros(q.shape[0], rank, dtype=q.dtype, device=q.device)
        qq = torch.zeros(x.shape[1], rank, dtype=q.dtype, device=q.device)
        p[:, :k] = (q @ u[:, :k]) * root
        qq[:, :k] = vt[:k].T * root
        return p, qq


class RatingChain:
    """The Gibbs chain over MF's rating rows for one training set."""

    def __init__(
        self, layout: Layout, users: Tensor, items: Tensor, target: Tensor, *, dim: int, n_rows: int
    ) -> None:
        self.layout, self.users, self.items, self.target = layout, users, items, target
        self.dim = dim
        dev, n_genres = target.device, layout.genre_weights.shape[1]
        rows = torch.randn(n_rows, dim + 1, dtype=torch.float64).to(dev) * 0.1
        genres = torch.randn(n_genres, dim + 1, dtype=torch.float64).to(dev) * 0.1
        rows[:, dim] = 0.0
        genres[:, dim] = 0.0
        self.state = Draw(rows=rows, genres=genres, noise=2.0)
        self.item_count = torch.bincount(items, minlength=layout.item_rows.shape[0])
        self.by_user = Incidence(users, items)
        self.by_item = Incidence(items, users)
        # Genre pairs over the rated items only (`gram_stats` of `by_item` has no others),
        # as places among them.
        self.genre_pairs, self.pair_weights = genre_pairs(layout.genre_weights[self.by_item.rows])

    def user_side(self) -> Tensor:
        return self.state.rows[self.layout.user_rows].sum(dim=1)  # [n_users+1, d+1]

    def item_side(self) -> Tensor:
        single = self.state.rows[self.layout.item_rows].sum(dim=1)  # [n_items+1, d+1]
        return single + self.layout.genre_weights @ self.state.genres  # [n_items+1, d+1]

    def _features(self, other: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
        """The other side's features [v, 1] per entity, and each rating's target less the
        other side's bias."""
        x = torch.cat([other[:, : self.dim], torch.ones_like(other[:, :1])], dim=1)  # [E, d+1]
        return x, self.target - other[index, self.dim]  # [E, d+1], [N]

    def sweep(self) -> Tensor:
        """One sweep: user-side fields, item-side fields, genres, noise. Returns each
        training rating's prediction less mu under the new draw."""
        gram, rhs = gram_stats(self.by_user, *self._features(self.item_side(), self.items))
        own = self.user_side()
        for col, span in enumerate(self.layout.user_fields):
            stats = (gram, rhs, self.by_user.rows)
            self._draw_field(self.layout.user_rows[:, col], span, own, stats)
        gram, rhs = gram_stats(self.by_item, *self._features(own, self.users))
        other = self.item_side()
        for col, span in enumerate(self.layout.item_fields):
            stats = (gram, rhs, self.by_item.rows)
            self._draw_field(self.layout.item_rows[:, col], span, other, stats)
        self._draw_genres(other, gram, rhs)
        pred = predict(own, other, self.users, self.items, self.dim)  # [N]
        sse = float((self.target - pred).pow(2).sum())
        n = self.target.shape[0]
        gamma = torch.distributions.Gamma(
            torch.tensor(NOISE_SHAPE + n / 2, dtype=torch.float64),
            torch.tensor(NOISE_RATE + sse / 2, dtype=torch.float64),
        )
        self.state.noise = float(gamma.sample())
        return pred

    def _draw_field(
        self,
        row_of: Tensor,  # [E]: each user's (or item's) row in this field
        span: tuple[int, int],
        side: Tensor,  # [E, d+1]: the side's sums, updated in place
        stats: tuple[Tensor, Tensor, Tensor],  # the entities with ratings: gram, rhs, index
    ) -> None:
        gram, rhs, rated = stats  # [A, d+1, d+1], [A, d+1], [A]
        first, size = span
        rows = self.state.rows
        local = row_of - first  # [E]
        old = rows[row_of]  # [E, d+1]
        rest = side[rated] - old[rated]  # [A, d+1]: the other fields' part of each side
        k = old.shape[1]
        # The field's rows that rated entities sum, and each rated entity's place among them.
        used, place = torch.unique(local[rated], return_inverse=True)  # [U], [A]
        g = torch.zeros(used.numel(), k, k, dtype=old.dtype, device=old.device)
        g.index_add_(0, place, gram)
        h = torch.zeros(used.numel(), k, dtype=old.dtype, device=old.device)
        h.index_add_(0, place, rhs - (gram @ rest.unsqueeze(2)).squeeze(2))
        mean, precision = hyper_draw(rows[first + used])
        noise = self.state.noise
        new = draw_rows(g, h, used, size, mean=mean, precision=precision, noise=noise)
        rows[first : first + size] = new
        side += new[local] - old

    def _draw_genres(self, side: Tensor, gram: Tensor, rhs: Tensor) -> None:
        """Genre rows one at a time: an item's bag holds several, so they share ratings.

        Genre g's conditional needs, over its items i (bag weight w_ig), the sums
        C_gg = sum w_ig^2 G_i and sum w_ig (h_i - G_i s_i) with s_i the item's side vector
        as the genres drawn before g left it. Both come from per-sweep sums: C_gh = sum
        w_ig w_ih G_i for every genre pair, one sparse product, and b_g = sum w_ig (h_i -
        G_i s_i) at the sweep's start, which a draw of genre h moves by C_gh (new - old).
        Gathering each genre's items' Gram matrices instead (twice per genre) was the
        largest share of a sweep on large catalogues (docs/SCALE.md item 29).
        """
        weights = self.layout.genre_weights  # [I, G]
        genres = self.state.genres
        n_genres, k = genres.shape
        used = ((weights > 0) & (self.item_count > 0).unsqueeze(1)).any(dim=0)
        mean, precision = hyper_draw(genres[used])
        if n_genres == 0:
            return
        rated = self.by_item.rows  # the items `gram` and `rhs` are for
        flat = gram.reshape(gram.shape[0], k * k)[self.genre_pairs.cols]  # [C, k*k]
        pair = self.genre_pairs.matmul(self.pair_weights, flat)  # [pairs with items, k*k]
        pairs = torch.zeros(n_genres * n_genres, k * k, dtype=flat.dtype, device=flat.device)
        pairs[self.genre_pairs.rows] = pair
        pair = pairs.view(n_genres, n_genres, k, k)
        # Zero for items without ratings, kept whole so that the product sums as before.
        fit = torch.zeros_like(side)  # [I, k]
        fit[rated] = rhs - (gram @ side[rated].unsqueeze(2)).squeeze(2)
        base = weights.T @ fit  # [G, k]
        start = genres.clone()
        for g in range(n_genres):
            old = genres[g].clone()
            hsum = base[g] + pair[g, g] @ old  # [k]
            new = posterior_draw(pair[g, g][None], hsum[None], mean, precision, self.state.noise)
            genres[g] = new[0]
            base -= pair[:, g] @ (new[0] - old)  # [G, k]
        side += weights @ (genres - start)  # [I, k]


def genre_pairs(weights: Tensor) -> tuple[Incidence, Tensor]:
    """Every (genre g, genre h, item i) with both genres in i's bag, as an Incidence from
    the pair g*G + h to its items, and each one's weight w_ig w_ih: a product with the
    items' Gram matrices sums them per genre pair. Built once per chain."""
    n_genres = weights.shape[1]
    rows, cols, values = [], [], []
    for h in range(n_genres):
        items = torch.nonzero(weights[:, h] > 0).squeeze(1)  # [M]
        member, g = torch.nonzero(weights[items] > 0, as_tuple=True)  # [P], [P]
        item = items[member]
        rows.append(g * n_genres + h)
        cols.append(item)
        values.append(weights[item, g] * weights[item, h])
    none = torch.zeros(0, dtype=torch.long, device=weights.device)
    row, col = torch.cat([none, *rows]), torch.cat([none, *cols])
    value = torch.cat([weights.new_zeros(0), *values])
    return Incidence(row, col), value


def predict(
    users_side: Tensor, items_side: Tensor, users: Tensor, items: Tensor, dim: int
) -> Tensor:
    """Each pair's rating less mu: p_u . q_i + b_u + b_i from the side vectors [v, b]."""
    u, i = users_side[users], items_side[items]  # [N, d+1]
    return (u[:, :dim] * i[:, :dim]).sum(dim=1) + u[:, dim] + i[:, dim]  # [N]


@dataclass
class Posterior:
    """What the kept draws add up to: the interaction's sketch and the biases' sums."""

    sketch: MeanSketch
    bias_rows: Tensor  # [table rows]
    bias_genres: Tensor  # [G]
    pred: Tensor  # [N]: training ratings' predictions less mu

    def add(self, chain: RatingChain, pred: Tensor) -> None:
        rows, genres, d = chain.state.rows, chain.state.genres, chain.dim
        n_user = chain.layout.n_user_rows
        self.sketch.add(rows[:n_user, :d], torch.cat([rows[n_user:, :d], genres[:, :d]]))
        self.bias_rows += rows[:, d]
        self.bias_genres += genres[:, d]
        self.pred += pred


def fit_rating_head(
    model: BiasedMF,
    *,
    users: Tensor,  # long [N]
    items: Tensor,  # long [N]
    ratings: Tensor,  # [N]
    tables: tuple[Tensor, Tensor, Tensor],  # user_feats, item_feats, item_genres (all rows)
    settings: GibbsSettings,
) -> dict[str, float]:
    """Samples MF's rating rows on the given ratings and writes their posterior mean
    (the interaction compressed to the model's factor dimension) into `model`'s rating
    head; returns the run's figures for the training report."""
    started = time.perf_counter()
    emb = model.factors
    layout = Layout.build(emb, *tables)
    target = ratings.double() - float(model.mu)
    chain = RatingChain(
        layout, users, items, target, dim=settings.dim, n_rows=emb.table.num_embeddings
    )
    sweeps, burn = settings.schedule(int(target.shape[0]))
    n_item_rows = emb.table.num_embeddings - layout.n_user_rows + emb.genre.shape[0]
    post = Posterior(
        sketch=MeanSketch(layout.n_user_rows, n_item_rows, emb.dim, device=target.device),
        bias_rows=torch.zeros_like(chain.state.rows[:, 0]),
        bias_genres=torch.zeros_like(chain.state.genres[:, 0]),
        pred=torch.zeros_like(target),
    )
    for sweep in range(sweeps):
        pred = chain.sweep()
        if sweep >= burn:
            post.add(chain, pred)
        if (sweep + 1) % 50 == 0 or sweep + 1 == sweeps:
            log.info(
                "gibbs sweep %d/%d: noise std %.4f", sweep + 1, sweeps, chain.state.noise**-0.5
            )
    kept = sweeps - burn
    mean_pred = post.pred / kept
    written = _write(model, layout, post, kept)
    return {
        "sweeps": float(sweeps),
        "burn_in": float(burn),
        "seconds": time.perf_counter() - started,
        "noise_std": chain.state.noise**-0.5,
        "train_rmse": float((target - mean_pred).pow(2).mean().sqrt()),
        # What the compression to the model's dimension changes in the training ratings.
        "compression_rmse": float(
            (predict(*written, users, items, emb.dim) - mean_pred).pow(2).mean().sqrt()
        ),
    }


@torch.no_grad()
def _write(model: BiasedMF, layout: Layout, post: Posterior, kept: int) -> tuple[Tensor, Tensor]:
    """Writes the posterior mean into the model's rating rows; returns the user and item
    side vectors [p, b] it gives (float64)."""
    emb, bias = model.factors, model.biases
    n_user = layout.n_user_rows
    p, q = post.sketch.factors(emb.dim)  # [user rows, D], [item rows + G, D]
    n_table = emb.table.num_embeddings
    rows = torch.cat(
        [torch.cat([p, q[: n_table - n_user]]), (post.bias_rows / kept)[:, None]], dim=1
    )
    genres = torch.cat([q[n_table - n_user :], (post.bias_genres / kept)[:, None]], dim=1)
    emb.table.weight.copy_(rows[:, : emb.dim])
    emb.genre.copy_(genres[:, : emb.dim])
    bias.table.weight.copy_(rows[:, emb.dim :])
    bias.genre.copy_(genres[:, emb.dim :])
    users_side = rows[layout.user_rows].sum(dim=1)
    items_side = rows[layout.item_rows].sum(dim=1) + layout.genre_weights @ genres
    return users_side, items_side
