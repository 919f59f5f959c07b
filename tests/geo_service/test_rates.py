"""The rate slices' arithmetic, against the promises the README makes of it."""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction

import pytest

from geo_service.ledger.rates import SLICE_S, allowance, rate_milli, slice_of, take

START = 1_795_000_000 * 10  # a slice number of today: the arithmetic must hold far from zero


@pytest.mark.parametrize("rate", [0.5, 1, 3, 7.5, 10, 20, 25, 99, 1000, 12_345.678])
def test_no_second_issues_more_than_the_rate_and_no_slice_more_than_a_tenth(rate: float) -> None:
    milli = rate_milli(rate)
    per_second: Counter[int] = Counter()
    for n in range(START, START + 10 * 2000):  # 2,000 s of slices
        a = allowance(milli, n)
        assert 0 <= a <= math.ceil(rate / 10)
        per_second[n // 10] += a
    assert max(per_second.values()) <= math.ceil(rate)
    assert sum(per_second.values()) == pytest.approx(rate * 2000, abs=1)  # the whole rate, spread evenly
    if rate == int(rate):
        assert set(per_second.values()) == {int(rate)}  # whole rates: exactly rate_per_s every second


@pytest.mark.parametrize("rate", ["0.5", "1", "3.3", "7.5", "20", "99", "1000", "12345.678"])
def test_any_run_of_slices_issues_its_share_of_the_rate_rounded_either_way_across_the_cycle_seam(rate: str) -> None:
    # The expectation comes from the rate alone: k consecutive slices last k/10 s, so they issue k/10 of the
    # rate, rounded down or up; ten of them (any second, not only a calendar one) issue floor or ceil of the rate.
    exact = Fraction(rate)
    milli = rate_milli(float(rate))
    seams = [n for c in (1, 179_500, START // 10_000 + 1) for n in range(c * 10_000 - 40, c * 10_000 + 40)]
    for first in seams:  # windows ending before, straddling and starting after a seam of the repeating pattern
        for k in (1, 2, 7, 10, 13, 25):
            issued = sum(allowance(milli, n) for n in range(first, first + k))
            share = exact * k / 10
            assert math.floor(share) <= issued <= math.ceil(share), (first, k, issued, share)


def test_take_fills_a_slice_then_refuses_and_counts_a_late_clock_against_the_newer_slice() -> None:
    milli, n = rate_milli(20), START + 3  # 2 a slice
    state = take(milli, 0, 0, n)
    assert state == (n, 1)
    state = take(milli, *state, n)
    assert state == (n, 2)
    assert take(milli, *state, n) is None  # the slice is full
    assert take(milli, *state, n - 1) is None  # an older clock counts against the newer, full slice
    assert take(milli, *state, n + 1) == (n + 1, 1)  # the next slice starts afresh
    assert take(-1, n, 10**9, n) == (n, 10**9 + 1)  # no limit


def test_slices_are_a_tenth_of_a_second() -> None:
    assert SLICE_S == 0.1
    assert slice_of(100.0) == 1000 and slice_of(100.0999) == 1000 and slice_of(100.1001) == 1001
