"""A player's event-wide win cap on a Redis Cluster: the player's wins live on another node than the task's keys,
so a claim holds a place first (reserve.lua), settles on its task's node only while the hold lasts (claim.lua),
and then turns the hold into a win or gives it back (confirm.lua). On one node the claim's own call checks the cap.

A hold whose process died before confirming stays until its deadline has long passed (HOLD_STALE_MS), when the
next claim of that player that finds no place looks up the held claim's outcome (its outcome key on the task's
node, or the record database) and settles the hold by it: no task node can settle the claim after its deadline,
so the outcome found is final. No player ever holds more places than the cap, so no player wins more.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any, NamedTuple

from geo_service.ledger.interface import ClaimIdTaken, ClaimRequest, LedgerRefusal
from geo_service.ledger.redis_layout import (
    HOLD_LEASE_MS,
    HOLD_STALE_MS,
    RESERVE_ARGS,
    epoch_key,
    id_bucket,
    outcome_key,
    player_key,
)
from geo_service.ledger.redis_state import Calls

_ROUNDS = 12  # reserve; wait for a settling claim, or resolve what is stale, and reserve again: ~1 s at most


class Caps(NamedTuple):
    """A claim's caps: the task's per player, the event's per player (0: none), and `place`, the claim script's
    `player` argument: 'none', 'here' (one node: the script checks it), or hold_place's answer (a cluster)."""

    task: int
    player: int
    place: str


class Place(NamedTuple):
    """hold_place's answer: the claim script's `player` argument (the hold's deadline in ms, 'counted': the claim won
    already, or 'capped'); when capped, the player's wins (Outcome.wins); when held, the hold's value if this call
    made it (one it moved on from an earlier call of the claim is never given back: that call may still settle)."""

    arg: str
    wins: tuple[tuple[str, int, str], ...] | None = None
    new_hold: str = ""


async def hold_place(ledger: Calls, r: ClaimRequest, cap: int) -> Place:
    """Hold the claim's place under the player's event cap on a cluster. Raise LedgerRefusal when the player's
    bucket lost its state."""
    key = player_key(r.user_id)
    values = {"claim_id": r.claim_id, "task_id": r.task_id, "poi_id": r.poi_id, "player_cap": cap,
              "lease_ms": HOLD_LEASE_MS, "stale_ms": HOLD_STALE_MS}
    for attempt in range(_ROUNDS):
        answer: Any = await ledger.call(lambda c: ledger.run_script(c, "reserve", [key, epoch_key(id_bucket(r.user_id))],
                                                                   [values[arg] for arg in RESERVE_ARGS]))
        if answer[0] == "state_lost":
            raise LedgerRefusal("the ledger's state of this player's wins was lost (its Redis node was emptied); their "
                                "claims wait for `geo-service ledger reconcile --repair`")
        if answer[0] == "held":
            return Place(str(answer[1]), new_hold=f"{answer[1]}\t{r.task_id}\t{r.poi_id}" if answer[2] == "new" else "")
        if answer[0] == "claim_id_taken":
            raise ClaimIdTaken(r.claim_id)
        if answer[0] == "capped":
            return Place("capped", wins_of(answer[1:]))
        if answer[0] == "busy":  # another claim of the player holds the last place for a few milliseconds more
            await asyncio.sleep(random.uniform(0.005, 0.02) * (attempt + 1))
            continue
        if answer[0] != "stale":
            return Place(str(answer[0]))
        for claim_id, hold in zip(answer[1::2], answer[2::2]):
            task_id = int(hold.split("\t")[1])
            await confirm(ledger, r.user_id, claim_id, await _win(ledger, task_id, claim_id), hold)
    raise LedgerRefusal("the player's other claims hold every place under the event's cap while they settle; retry "
                        "this one shortly")


def wins_of(flat: list[str]) -> tuple[tuple[str, int, str], ...] | None:
    """Return (claim_id, task_id, prize_type) of each win from [claim_id, "<task>\t<prize>", ...]; None for none, or
    for a value not of that form (then the wins are not known)."""
    wins = []
    for claim_id, win in zip(flat[::2], flat[1::2]):
        task, tab, prize = win.partition("\t")
        if not (tab and task.isdigit()):
            return None
        wins.append((claim_id, int(task), prize))
    return tuple(wins) or None


async def confirm(ledger: Calls, user_id: str, claim_id: str, win: str, hold: str = "") -> int:
    """Settle a hold by its claim's win ("<task>\t<prize>", or '': it did not win); return the player's wins after
    it. `hold`: the hold as it must still be ('': any, the claim's own process after its claim settled)."""
    return int(await ledger.call(lambda c: ledger.run_script(c, "confirm", [player_key(user_id)], [claim_id, win, hold])))


async def _win(ledger: Calls, task_id: int, claim_id: str) -> str:
    """Return a held claim's win as "<task>\t<prize>" ('': it lost, or never settled; its outcome is kept longer
    than a hold)."""
    raw: Any = await ledger.call(lambda c: c.get(outcome_key(task_id, claim_id)))
    if raw is not None:
        outcome, prize = raw.split("\t", 2)[:2]
        return f"{task_id}\t{prize}" if outcome == "won" else ""
    if not ledger.record_db:
        return ""
    record = await ledger.store().find(claim_id)
    return f"{task_id}\t{record.prize_type}" if record is not None and record.outcome == "won" else ""
