"""``bench/eval/stats.py``: Wilson's interval and Newcombe's paired difference, against published values."""

from __future__ import annotations

import pytest

from bench.eval.stats import paired_difference, wilson_interval, z_for


def pairs(both: int, a_only: int, b_only: int, neither: int) -> list[tuple[bool, bool]]:
    return [(True, True)] * both + [(True, False)] * a_only + [(False, True)] * b_only + [(False, False)] * neither


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998, Statistics in Medicine 17:857-872), Table I, method 3 (Wilson score, no continuity correction)
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.1611), abs=1e-4)
    assert wilson_interval(1, 29) == pytest.approx((0.0061, 0.1718), abs=1e-4)


@pytest.mark.parametrize("n", [1, 2, 5, 13, 100])
def test_wilson_contains_the_rate_and_stays_in_0_1(n: int) -> None:
    for k in range(n + 1):
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
    # at the ends one bound is exact
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0


def test_wilson_narrows_with_more_episodes_and_widens_with_confidence() -> None:
    w5 = wilson_interval(3, 5)
    w50 = wilson_interval(30, 50)
    assert w50[1] - w50[0] < w5[1] - w5[0]
    w99 = wilson_interval(3, 5, confidence=0.99)
    assert w99[0] < w5[0] and w99[1] > w5[1]
    assert z_for(0.95) == pytest.approx(1.959964, abs=1e-6)


def test_wilson_without_episodes_and_bad_input() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, confidence=1.0)


def test_paired_difference_matches_the_textbook() -> None:
    # Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, chapter 8: Cavo et al. (2012),
    # Newcombe square-and-add interval -0.0621 (-0.1186 to -0.0046)
    d = paired_difference(pairs(59, 6, 16, 80))
    assert (d.n, d.both, d.a_only, d.b_only, d.neither) == (161, 59, 6, 16, 80)
    assert d.difference == pytest.approx(-0.0621, abs=1e-4)
    assert (d.low, d.high) == pytest.approx((-0.1186, -0.0046), abs=1e-4)
    assert d.rate_a == pytest.approx(65 / 161) and d.rate_b == pytest.approx(75 / 161)


def test_paired_difference_is_antisymmetric_and_contains_the_estimate() -> None:
    for table in [(1, 1, 7, 12), (5, 5, 0, 0), (0, 3, 0, 2), (2, 0, 0, 2), (0, 0, 0, 4), (10, 2, 1, 3)]:
        d = paired_difference(pairs(*table))
        both, a_only, b_only, neither = table
        swapped = paired_difference(pairs(both, b_only, a_only, neither))
        assert swapped.difference == pytest.approx(-d.difference)
        assert (swapped.low, swapped.high) == pytest.approx((-d.high, -d.low))
        assert -1.0 <= d.low <= d.difference <= d.high <= 1.0


def test_paired_difference_of_equal_agents_contains_zero_and_of_none_is_unknown() -> None:
    same = paired_difference(pairs(3, 0, 0, 2))
    assert same.difference == 0.0 and same.low < 0.0 < same.high
    empty = paired_difference([])
    assert (empty.n, empty.difference, empty.low, empty.high) == (0, 0.0, -1.0, 1.0)
    # a clear win on 10 seeds excludes zero
    win = paired_difference(pairs(0, 10, 0, 0))
    assert win.difference == 1.0 and win.low > 0.5 and win.high == 1.0
