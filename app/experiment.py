"""Statistics of the teacher/student experiment readout (docs/experiment.md).

The unit is a served list (an impression): it is a hit when the user answered at least one
of its items positively. The hit rate per variant is a proportion with a Wilson interval;
the student-minus-teacher difference has two intervals: Newcombe's (valid when read once,
at a sample size fixed in advance) and the always-valid one of a mixture sequential
probability ratio test (mSPRT; Johari, Koomen, Pekelis and Walsh, "Always valid inference:
continuous monitoring of A/B tests", Operations Research 2022, arXiv:1512.04922),
whose p-value stays valid however often the readout is looked at and whenever one stops.

Pure functions on counts: no Redis, no I/O, so they are tested against hand-computed cases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

Z95 = 1.959963984540054  # the 97.5% normal quantile
ALPHA = 0.05


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def as_list(self) -> list[float]:
        return [self.low, self.high]


def wilson_interval(successes: int, trials: int, *, z: float = Z95) -> Interval | None:
    """Wilson score interval of a proportion; None without trials.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage near 0 and 1,
    where a good or bad recommender's hit rate tends to sit.
    """
    if trials <= 0:
        return None
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials))
    return Interval(max(0.0, centre - half), min(1.0, centre + half))


def newcombe_difference(x1: int, n1: int, x2: int, n2: int, *, z: float = Z95) -> Interval | None:
    """Newcombe's hybrid score interval (his method 10) for p1 - p2, from the two Wilson
    intervals; valid for one look at a planned sample size."""
    first, second = wilson_interval(x1, n1, z=z), wilson_interval(x2, n2, z=z)
    if first is None or second is None:
        return None
    p1, p2 = x1 / n1, x2 / n2
    difference = p1 - p2
    low = difference - math.sqrt((p1 - first.low) ** 2 + (second.high - p2) ** 2)
    high = difference + math.sqrt((first.high - p1) ** 2 + (p2 - second.low) ** 2)
    return Interval(low, high)


@dataclass(frozen=True)
class SequentialLook:
    """The mSPRT at one look: the mixture likelihood ratio of H0 (no difference), its
    p-value 1/ratio (capped at 1) and the always-valid (1 - alpha) interval."""

    difference: float
    variance: float
    log_ratio: float
    p_value: float
    interval: Interval


def msprt_difference(
    x1: int, n1: int, x2: int, n2: int, *, tau: float, alpha: float = ALPHA
) -> SequentialLook | None:
    """mSPRT for p1 - p2 with a normal mixture N(0, tau^2) over the difference and the
    normal approximation of the difference of two proportions (plug-in variance).

    With theta the estimated difference and V its variance:
    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 theta^2 / (2 V (V + tau^2))),
    p = min(1, 1 / Lambda), and the interval is every theta0 whose Lambda(theta0) < 1/alpha:
    theta +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V))).
    None while a variant has no data or the variance is zero (all hits or none on both
    sides): the normal approximation says nothing then.
    """
    if n1 <= 0 or n2 <= 0:
        return None
    p1, p2 = x1 / n1, x2 / n2
    variance = p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2
    if variance <= 0.0:
        return None
    difference = p1 - p2
    t2 = tau * tau
    log_ratio = 0.5 * math.log(variance / (variance + t2)) + t2 * difference**2 / (
        2 * variance * (variance + t2)
    )
    p_value = 1.0 if log_ratio <= 0 else math.exp(-log_ratio)
    half = math.sqrt(
        variance
        * (variance + t2)
        / t2
        * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance))
    )
    return SequentialLook(
        difference=difference,
        variance=variance,
        log_ratio=log_ratio,
        p_value=p_value,
        interval=Interval(difference - half, difference + half),
    )


@dataclass(frozen=True)
class RunningTest:
    """What the test has said over all looks so far: the smallest p-value and the
    intersection of the intervals. Both stay valid (Ville's inequality bounds the chance
    that the ratio ever crosses 1/alpha), and they only ever tighten, so a verdict once
    reached does not flicker away at the next look."""

    p_value: float
    interval: Interval
    looks: int


def combine_looks(previous: RunningTest | None, look: SequentialLook) -> RunningTest:
    if previous is None:
        return RunningTest(p_value=look.p_value, interval=look.interval, looks=1)
    return RunningTest(
        p_value=min(previous.p_value, look.p_value),
        interval=Interval(
            max(previous.interval.low, look.interval.low),
            min(previous.interval.high, look.interval.high),
        ),
        looks=previous.looks + 1,
    )


def verdict(running: RunningTest | None, *, alpha: float, margin: float) -> str:
    """One line for people: which variant is better, or whether the student is within
    `margin` (absolute hit rate) of the teacher, or that the data cannot tell yet."""
    if running is None:
        return "not enough data"
    low, high = running.interval.low, running.interval.high
    if running.p_value <= alpha and low > 0:
        return "student better"
    if running.p_value <= alpha and high < 0:
        return "teacher better"
    if low > -margin:
        return f"student not worse than teacher by more than {margin:g}"
    return "no conclusion yet"


# -- the readout document -----------------------------------------------------------

VARIANTS = ("teacher", "student")
EVENTS = ("click", "rating", "purchase", "dismiss")


def _int(counts: dict[str, str], name: str) -> int:
    return int(float(counts.get(name, 0)))


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def variant_readout(counts: dict[str, str], variant: str) -> dict[str, Any]:
    impressions = _int(counts, f"impressions:{variant}")
    lists_hit = _int(counts, f"hit_lists:{variant}")
    rated = _int(counts, f"abs_err_n:{variant}")
    interval = wilson_interval(lists_hit, impressions)
    return {
        "impressions": impressions,
        "feedback": _int(counts, f"feedback:{variant}"),
        "events": {event: _int(counts, f"event:{variant}:{event}") for event in EVENTS},
        "hits": _int(counts, f"hits:{variant}"),
        "lists_with_hit": lists_hit,
        "hit_rate": _ratio(lists_hit, impressions),
        "hit_rate_ci95": interval.as_list() if interval else None,
        "rated": rated,
        "online_mae": _ratio(float(counts.get(f"abs_err_sum:{variant}", 0.0)), rated),
    }


def shadow_readout(counts: dict[str, str], *, percent: float) -> dict[str, Any]:
    scored = _int(counts, "shadow:n")
    ranked = _int(counts, "shadow:rank_n")
    return {
        "percent": percent,
        "scored": scored,
        "dropped": _int(counts, "shadow:dropped"),
        "failed": _int(counts, "shadow:failed"),
        "mean_overlap_at_k": _ratio(float(counts.get("shadow:overlap_sum", 0.0)), scored),
        "rank_correlation_n": ranked,
        "mean_rank_correlation": _ratio(float(counts.get("shadow:rank_sum", 0.0)), ranked),
        "mean_abs_rating_diff": _ratio(float(counts.get("shadow:rating_diff_sum", 0.0)), scored),
    }


def difference_readout(
    counts: dict[str, str],
    *,
    running: RunningTest | None,
    look: SequentialLook | None,
    tau: float,
    margin: float,
    alpha: float = ALPHA,
) -> dict[str, Any]:
    x1, n1 = _int(counts, "hit_lists:student"), _int(counts, "impressions:student")
    x2, n2 = _int(counts, "hit_lists:teacher"), _int(counts, "impressions:teacher")
    fixed = newcombe_difference(x1, n1, x2, n2)
    return {
        "metric": "hit_rate",
        "student_minus_teacher": (x1 / n1 - x2 / n2) if n1 and n2 else None,
        "ci95": fixed.as_list() if fixed else None,
        "always_valid_ci95": running.interval.as_list() if running else None,
        "p_value": running.p_value if running else None,
        "p_value_this_look": look.p_value if look else None,
        "looks": running.looks if running else 0,
        "alpha": alpha,
        "test": f"mSPRT, normal mixture tau={tau:g} (always valid; docs/experiment.md)",
        "margin": margin,
        "verdict": verdict(running, alpha=alpha, margin=margin),
    }
