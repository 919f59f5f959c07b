"""Claims: the snapshot checks, the weighted draw with fallback, the per-prize issue rate, and the
order in which they meet the ledger."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from geo_service.errors import NotFound, PoiNotInTask
from geo_service.ledger import ClaimRequest, Ledger, Outcome, distance_m
from geo_service.nearby import Lookup, StatusView
from geo_service.params import ClaimBody

SLICE_S = 0.1  # issue limits are enforced per 100 ms, so a second's quota is spread across it


@dataclass(slots=True)
class RateLimiter:
    """Token buckets per (task, prize): rate_per_s, split over the worker processes, refilled
    continuously and holding at most one 100 ms slice's worth, so issuance stays smooth within
    each second instead of bursting at its start."""

    share: float = 1.0  # this process's part of every rate: 1 / workers
    _buckets: dict[tuple[int, str], tuple[float, float]] = field(default_factory=dict)  # -> (tokens, at)

    def _tokens(self, key: tuple[int, str], rate_per_s: float, now: float) -> float:
        rate = rate_per_s * self.share
        capacity = max(1.0, rate * SLICE_S)
        tokens, at = self._buckets.get(key, (capacity, now))
        return min(capacity, tokens + (now - at) * rate)

    def allows(self, task_id: int, prize_type: str, rate_per_s: float | None, now: float) -> bool:
        """Return whether one more of this prize may be issued now."""
        # The epsilon absorbs float error in clock differences (100.1 - 100.0 < 0.1).
        return rate_per_s is None or self._tokens((task_id, prize_type), rate_per_s, now) >= 1.0 - 1e-9

    def record(self, task_id: int, prize_type: str, rate_per_s: float | None, now: float) -> None:
        """Count one issued prize against its rate."""
        if rate_per_s is not None:
            key = (task_id, prize_type)
            self._buckets[key] = (self._tokens(key, rate_per_s, now) - 1.0, now)


def draw_order(task_id: int, prizes: Sequence[dict[str, Any]], limiter: RateLimiter, rng: random.Random,
               now: float) -> list[str]:
    """Return the prize types to try, in order: a weighted draw without replacement among the prizes
    not over their rate. The ledger takes the first that is not exhausted, so later entries are the
    fallback (Efraimidis-Spirakis keys: u ** (1 / weight), highest first)."""
    keyed = [
        (rng.random() ** (1.0 / p["weight"]), p["prize_type"])
        for p in prizes
        if p["weight"] > 0 and limiter.allows(task_id, p["prize_type"], p["rate_per_s"], now)
    ]
    return [prize_type for _, prize_type in sorted(keyed, reverse=True)]


@dataclass(frozen=True, slots=True)
class ClaimRules:
    catch_radius_m: float
    win_cap: int
    max_speed_mps: float


def check_claim(lookup: Lookup, status: StatusView, body: ClaimBody, rules: ClaimRules) -> tuple[int, str | None]:
    """Return (task position, rejection outcome or None) from the snapshot alone; raise for bad ids."""
    task = lookup.task_position.get(body.task_id)
    if task is None:
        raise NotFound(f"no task {body.task_id} in snapshot {lookup.seq}", field="task_id")
    rows = lookup.poi_rows(body.poi_id)
    if not rows:
        raise NotFound(f"no POI {body.poi_id} in snapshot {lookup.seq}", field="poi_id")
    row = next((r for r in rows if r[0] == task), None)
    if row is None:
        raise PoiNotInTask(f"POI {body.poi_id} does not belong to task {body.task_id}", field="poi_id")
    if distance_m(body.lat, body.lng, row[2], row[3]) > rules.catch_radius_m:
        return task, "too_far"
    if not status.active[task]:
        return task, "task_inactive"
    return task, None


REASONS = {
    "too_far": "the player is farther from the POI than the catch radius",
    "task_inactive": "the task is disabled, not started, ended or exhausted",
}


async def process_claim(lookup: Lookup, status: StatusView, ledger: Ledger, limiter: RateLimiter, rng: random.Random,
                        user_id: str, body: ClaimBody, rules: ClaimRules, now: float) -> Outcome:
    """Answer a claim: a retry gets its first outcome; otherwise check, draw, and run the ledger transaction."""
    replay = await ledger.outcome_of(body.claim_id)
    if replay is not None:
        return replay
    task, rejected = check_claim(lookup, status, body, rules)
    if rejected is not None:
        return Outcome(body.claim_id, rejected, reason=REASONS[rejected])
    prizes = lookup.snapshot.tasks[task]["prizes"]
    order = draw_order(body.task_id, prizes, limiter, rng, now)
    request = ClaimRequest(body.claim_id, user_id, body.task_id, body.poi_id, body.lat, body.lng, now)
    outcome = await ledger.claim(request, order, rules.win_cap, rules.max_speed_mps)
    if outcome.outcome == "won":
        rate = next(p["rate_per_s"] for p in prizes if p["prize_type"] == outcome.prize_type)
        limiter.record(body.task_id, outcome.prize_type or "", rate, now)
    return outcome
