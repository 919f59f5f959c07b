"""Claims: the snapshot checks, the weighted draw, and the order in which they meet the ledger.

The ledger settles what must hold across processes and hosts: the quota, the player's win cap, the
prize's 100 ms rate slice and the claim's idempotency. This module decides what needs no shared
state: whether the claim names a real task and POI near the player, and the order of the draw.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from geo_service.ledger import ClaimRequest, Ledger, Outcome
from geo_service.nearby import Lookup, StatusView
from geo_service.snapshot.format import PrizeRow, TaskRow
from geo_service.snapshot.grid import MAX_ABS_LNG, distance_m
from geo_service.stagger import opens_at
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
    player_win_cap: int = 0  # the event's, across tasks (0: none)


class CappedPlayers:
    """This worker's players known to have reached the event's win cap, with their wins, answered without a ledger
    call: a player pinned to this host (deploy/nginx.conf) costs the ledger one refusal, not one per claim. Learnt
    only from a ledger's refusal that listed all the player's wins (none still settling), so a retried winning claim
    still gets its first outcome; a retried claim that did not win is told player_cap_reached. Bounded, oldest
    forgotten first (a forgotten player costs one more ledger call). The ledger still decides every win."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._players: OrderedDict[str, dict[str, tuple[int, str]]] = OrderedDict()
        self.answered = 0  # claims answered from here

    def learn(self, user_id: str, outcome: Outcome) -> None:
        """Remember the player if the ledger refused them for the event's cap, telling all their wins."""
        if outcome.outcome == "player_cap_reached" and outcome.wins:
            self._players[user_id] = {claim_id: (task_id, prize) for claim_id, task_id, prize in outcome.wins}
            if len(self._players) > self.size:
                self._players.popitem(last=False)

    def answer(self, user_id: str, body: ClaimBody) -> Outcome | None:
        """Return the outcome of a capped player's claim (None: not known here, or a winning claim's id sent for
        another task, which the ledger refuses)."""
        wins = self._players.get(user_id)
        if wins is None:
            return None
        won = wins.get(body.claim_id)
        if won is not None and won[0] != body.task_id:
            return None
        self.answered += 1
        if won is not None:
            return Outcome.of(body.claim_id, "won", won[1], wins_left=0)
        return Outcome.of(body.claim_id, "player_cap_reached", wins_left=0)


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


def not_yet(task: TaskRow, user_id: str, now: float) -> int | None:
    """Return when a staggered task opens for the player, if it has not yet (None: open)."""
    opens = int(opens_at(user_id, task["stagger_groups"], task["stagger_s"], task["starts_at"]))
    return opens if now < opens else None


async def process_claim(lookup: Lookup, status: StatusView, ledger: Ledger, rng: random.Random, user_id: str,
                        body: ClaimBody, rules: ClaimRules, now: float, capped: CappedPlayers) -> Outcome:
    """Answer a claim: check it against the snapshot, draw, and settle it in one ledger call, which
    returns a retried claim's first outcome. A claim the snapshot rejects is looked up first, so a
    retry still gets its first outcome after the task has ended or run out. A claim_id bound to another
    claim raises ClaimIdTaken, from either call. A player this worker knows to be at the event's cap is
    answered so at once."""
    task, rejected = check_claim(lookup, status, body, rules)
    row = lookup.snapshot.tasks[task]
    opens = not_yet(row, user_id, now) if rejected is None else None
    request = ClaimRequest(body.claim_id, user_id, body.task_id, body.poi_id, body.lat, body.lng, now)
    if rejected is not None or opens is not None:
        replay = await ledger.outcome_of(request)
        if replay is not None:
            return replay
        return Outcome.of(body.claim_id, rejected or "not_yet", opens_at=opens)
    known = capped.answer(user_id, body)
    if known is not None:
        return known
    outcome = await ledger.claim(request, draw_order(row["prizes"], rng), rules.win_cap, rules.max_speed_mps,
                                 rules.player_win_cap)
    capped.learn(user_id, outcome)
    return outcome
