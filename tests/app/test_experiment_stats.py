"""The readout's statistics against hand-computed and published cases, and the property
that makes the sequential test worth its wider interval: repeated looks keep its error."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.experiment import (
    Interval,
    RunningTest,
    combine_looks,
    msprt_difference,
    newcombe_difference,
    verdict,
    wilson_interval,
)


def test_wilson_interval_matches_hand_computed_values() -> None:
    # 8/10: z^2 = 3.841459; centre = (0.8 + 0.192073) / 1.384146 = 0.716740;
    # half = 1.959964 / 1.384146 * sqrt(0.016 + 0.009604) = 0.226578.
    interval = wilson_interval(8, 10)
    assert interval is not None
    assert interval.low == pytest.approx(0.490162, abs=1e-6)
    assert interval.high == pytest.approx(0.943318, abs=1e-6)
    # 0/10: centre = half = 0.192073 / 1.384146 = 0.138766: [0, 0.277533].
    zero = wilson_interval(0, 10)
    assert zero is not None and zero.low == 0.0
    assert zero.high == pytest.approx(0.277533, abs=1e-6)
    assert wilson_interval(0, 0) is None


@pytest.mark.parametrize(
    ("x1", "n1", "x2", "n2", "low", "high"),
    [
        # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10.
        (56, 70, 48, 80, 0.0524, 0.3339),
        (9, 10, 3, 10, 0.1705, 0.8090),
        (5, 56, 0, 29, -0.0381, 0.1926),
    ],
)
def test_newcombe_interval_matches_the_published_examples(
    x1: int, n1: int, x2: int, n2: int, low: float, high: float
) -> None:
    interval = newcombe_difference(x1, n1, x2, n2)
    assert interval is not None
    assert interval.low == pytest.approx(low, abs=5e-5)
    assert interval.high == pytest.approx(high, abs=5e-5)


def test_msprt_matches_a_hand_computed_case() -> None:
    # 60/100 against 50/100, tau = 0.05: V = 0.24/100 + 0.25/100 = 0.0049, tau^2 = 0.0025;
    # log Lambda = 0.5 ln(0.0049 / 0.0074) + 0.0025 * 0.1^2 / (2 * 0.0049 * 0.0074)
    #            = -0.206122 + 0.344732 = 0.138610, so p = exp(-0.138610) = 0.870567;
    # half width = sqrt(0.0049 * 0.0074 / 0.0025 * (2 ln 20 + ln(0.0074 / 0.0049)))
    #            = sqrt(0.014504 * (5.991465 + 0.412245)) = 0.304761.
    look = msprt_difference(60, 100, 50, 100, tau=0.05)
    assert look is not None
    assert look.variance == pytest.approx(0.0049)
    assert look.log_ratio == pytest.approx(0.138610, abs=1e-6)
    assert look.p_value == pytest.approx(0.870567, abs=1e-6)
    assert look.interval.low == pytest.approx(0.1 - 0.304761, abs=1e-6)
    assert look.interval.high == pytest.approx(0.1 + 0.304761, abs=1e-6)


def test_msprt_is_more_careful_than_a_single_look_test() -> None:
    # 330/1000 against 270/1000: V = 0.0002211 + 0.0001971 = 0.0004182;
    # log Lambda = 0.5 ln(0.0004182 / 0.0029182) + 0.0025 * 0.06^2 / (2 * 0.0004182 * 0.0029182)
    #            = -0.971386 + 3.687346 = 2.715961: p = 0.066141, where a one-look z test
    # (z = 0.06 / sqrt(0.0004182) = 2.934) would say 0.0033.
    look = msprt_difference(330, 1000, 270, 1000, tau=0.05)
    assert look is not None
    assert look.p_value == pytest.approx(0.066141, abs=1e-6)
    assert look.interval.low < 0 < look.interval.high  # consistent: p > 0.05
    z = 0.06 / math.sqrt(0.0004182)
    assert math.erfc(z / math.sqrt(2)) == pytest.approx(0.00334, abs=1e-5)


def test_msprt_needs_data_on_both_sides_and_some_variance() -> None:
    assert msprt_difference(0, 0, 5, 10, tau=0.05) is None
    assert msprt_difference(0, 10, 0, 10, tau=0.05) is None
    assert msprt_difference(10, 10, 10, 10, tau=0.05) is None


def test_the_p_value_is_below_alpha_exactly_when_zero_leaves_the_interval() -> None:
    for x1, x2 in [(330, 270), (345, 270), (360, 270), (300, 300), (200, 290)]:
        look = msprt_difference(x1, 1000, x2, 1000, tau=0.05)
        assert look is not None
        outside = not look.interval.low <= 0 <= look.interval.high
        assert (look.p_value <= 0.05) == outside, (x1, x2)


def test_running_test_keeps_the_smallest_p_and_the_intersection() -> None:
    first = msprt_difference(40, 100, 30, 100, tau=0.05)
    second = msprt_difference(70, 200, 62, 200, tau=0.05)
    assert first is not None and second is not None
    running = combine_looks(combine_looks(None, first), second)
    assert running.looks == 2
    assert running.p_value == min(first.p_value, second.p_value)
    assert running.interval == Interval(
        max(first.interval.low, second.interval.low),
        min(first.interval.high, second.interval.high),
    )


def test_verdicts() -> None:
    def run(p: float, low: float, high: float) -> RunningTest:
        return RunningTest(p_value=p, interval=Interval(low, high), looks=3)

    assert verdict(None, alpha=0.05, margin=0.02) == "not enough data"
    assert verdict(run(0.01, 0.01, 0.05), alpha=0.05, margin=0.02) == "student better"
    assert verdict(run(0.01, -0.09, -0.03), alpha=0.05, margin=0.02) == "teacher better"
    assert (
        verdict(run(0.6, -0.015, 0.02), alpha=0.05, margin=0.02)
        == "student not worse than teacher by more than 0.02"
    )
    assert verdict(run(0.6, -0.05, 0.04), alpha=0.05, margin=0.02) == "no conclusion yet"


def test_repeated_looks_keep_the_false_positive_rate_under_alpha() -> None:
    """Two identical variants (hit rate 0.3), looked at after every 100 impressions each,
    up to 5000: the share of experiments that ever declare a difference must stay near
    alpha for the sequential test, while peeking at a one-look z test inflates it."""
    rng = np.random.default_rng(7)
    experiments, step, looks = 300, 100, 50
    hits = rng.random((experiments, 2, step * looks)) < 0.3
    cumulative = hits.reshape(experiments, 2, looks, step).sum(axis=3).cumsum(axis=2)
    sequential_rejects = naive_rejects = 0
    for e in range(experiments):
        sequential = naive = False
        for look in range(looks):
            n = step * (look + 1)
            x1, x2 = int(cumulative[e, 0, look]), int(cumulative[e, 1, look])
            result = msprt_difference(x1, n, x2, n, tau=0.05)
            assert result is not None
            sequential |= result.p_value <= 0.05
            p1, p2 = x1 / n, x2 / n
            z = (p1 - p2) / math.sqrt(p1 * (1 - p1) / n + p2 * (1 - p2) / n)
            naive |= math.erfc(abs(z) / math.sqrt(2)) <= 0.05
        sequential_rejects += sequential
        naive_rejects += naive
    assert sequential_rejects / experiments <= 0.06
    assert naive_rejects / experiments >= 0.15
