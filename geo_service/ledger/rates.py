"""Issue-rate slices: how many of a prize may be issued in each 100 ms slice of time.

A prize's rate_per_s is held in the ledger as thousandths (`rate_milli`, -1 for no limit) and spread
over fixed slices numbered from the epoch (slice n covers [n/10, (n+1)/10) s): slice n may issue
floor((m+1)·R/10^4) − floor(m·R/10^4), m = n mod 10^4. Summed over the ten slices of a calendar
second that is at most ceil(rate_per_s), and exactly rate_per_s for whole rates; one slice never
issues more than ceil(rate_per_s / 10). The pattern repeats every 10^4 slices, which keeps every
product below 2^53: the Redis ledger's Lua (doubles only) computes the same numbers.
"""

from __future__ import annotations

import math

SLICE_S = 0.1
CYCLE = 10_000  # slices after which allowance() repeats, for any rate in thousandths
UNLIMITED = -1


def rate_milli(rate_per_s: float | None) -> int:
    """Return a rate as the ledger stores it: thousandths per second, or UNLIMITED for None."""
    return UNLIMITED if rate_per_s is None else round(rate_per_s * 1000)


def rate_per_s(milli: int) -> float | None:
    """Return the rate a stored value stands for (None: no limit)."""
    return None if milli < 0 else milli / 1000


def slice_of(at_s: float) -> int:
    """Return the number of the 100 ms slice holding the moment at_s (epoch seconds)."""
    return math.floor(at_s * 10)


def allowance(milli: int, n: int) -> int:
    """Return how many of a prize at rate `milli` slice n may issue (a large number when unlimited)."""
    if milli < 0:
        return 2**62
    m = n % CYCLE
    return (m + 1) * milli // CYCLE - m * milli // CYCLE


def take(milli: int, slice_no: int, used: int, n: int) -> tuple[int, int] | None:
    """Return the (slice, used) state after issuing one more at slice n, or None if the slice is full.

    The state is the slice the prize last issued in and how many it issued there. A slice older than the
    state's (another host's clock runs ahead) counts against the state's slice, so no slice ever exceeds
    its allowance whatever the clocks say.
    """
    if n > slice_no:
        slice_no, used = n, 0
    if used >= allowance(milli, slice_no):
        return None
    return slice_no, used + 1
