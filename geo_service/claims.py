"""Claims: the snapshot checks, the weighted draw, and the order in which they meet the ledger.

The ledger settles what must hold across processes and hosts: the quota, the player's win cap, the
prize's 100 ms rate slice and the claim's idempotency. This module decides what needs no shared
state: whether the claim names a real task and POI near the player, and the order of the draw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from geo_service.ledger import ClaimRequest, Ledger, Outcome
from geo_service.nearby import Lookup, StatusView
from geo_service.snapshot.format import PrizeRow
from geo_service.snapshot.grid import MAX_ABS_LNG, distance_m
from geo_service.web.errors import NotFound, PoiNotInTask
from geo_service.web.params import claim_id_param, field_of, integer_of, json_object, number_in_range, served_position


@dataclass(frozen=True, slots=True)
class ClaimBody:
    """What a player's POST /v1/claims says: the claim as the player sends it (ledger.ClaimRequest adds
    who, from the token, and when)."""

    claim_id: str
    task_id: int
    poi_id: int
    lat: float
    lng: float


def claim_body(raw: bytes) -> ClaimBody:
    """Parse and check a claim's JSON body."""
    body = json_object(raw)
    claim_id = claim_id_param(field_of(body, "claim_id", (str,), "a string"))
    task_id, poi_id = integer_of(body, "task_id"), integer_of(body, "poi_id")
    lat = number_in_range("lat", float(field_of(body, "lat", (int, float), "a number")), body["lat"], -90.0, 90.0)
    lng = number_in_range("lng", float(field_of(body, "lng", (int, float), "a number")), body["lng"], -MAX_ABS_LNG, MAX_ABS_LNG)
    return ClaimBody(claim_id, task_id, poi_id, *served_position(lat, lng))


def draw_order(prizes: Sequence[PrizeRow], rng: random.Random) -> list[str]:
    """Return the prize types to try, in order: a weighted draw without replacement. The ledger takes
    the first below its quota with room in its rate slice, so later entries are the fallback
    (Efraimidis-Spirakis keys: u ** (1 / weight), highest first)."""
    keyed = [(rng.random() ** (1.0 / p["weight"]), p["prize_type"]) for p in prizes if p["weight"] > 0]
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


async def process_claim(lookup: Lookup, status: StatusView, ledger: Ledger, rng: random.Random, user_id: str,
                        body: ClaimBody, rules: ClaimRules, now: float) -> Outcome:
    """Answer a claim: check it against the snapshot, draw, and settle it in one ledger call, which
    returns a retried claim's first outcome. A claim the snapshot rejects is looked up first, so a
    retry still gets its first outcome after the task has ended or run out. A claim_id bound to another
    claim raises ClaimIdTaken, from either call."""
    task, rejected = check_claim(lookup, status, body, rules)
    request = ClaimRequest(body.claim_id, user_id, body.task_id, body.poi_id, body.lat, body.lng, now)
    if rejected is not None:
        replay = await ledger.outcome_of(request)
        return replay if replay is not None else Outcome.of(body.claim_id, rejected)
    order = draw_order(lookup.snapshot.tasks[task]["prizes"], rng)
    return await ledger.claim(request, order, rules.win_cap, rules.max_speed_mps)
