"""A player's event-wide win cap on a Redis Cluster: the player's wins live on another node than the task's keys,
so a claim holds a place first (reserve.lua), settles on its task's node only while the hold lasts (claim.lua),
and then turns the hold into a win or gives it back (confirm.lua). On one node the claim's own call checks the cap.

A hold whose process died before confirming stays until its deadline has long passed (HOLD_STALE_MS), when the
next claim of that player that finds no place looks up the held claim's outcome (its outcome key on the task's
node, or the record database) and settles the hold by it: no task node can settle the claim after its deadline,
so the outcome found is final. No player ever holds more places than the cap, so no player wins more.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from geo_service.ledger.interface import ClaimRequest, LedgerRefusal
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

_ROUNDS = 3  # reserve, resolve what is stale, reserve again: bounded


class Caps(NamedTuple):
    """A claim's caps: the task's per player, the event's per player (0: none), and `place`, the claim script's
    `player` argument: 'none', 'here' (one node: the script checks it), or hold_place's answer (a cluster)."""

    task: int
    player: int
    place: str


async def hold_place(ledger: Calls, r: ClaimRequest, cap: int) -> str:
    """Return the claim script's `player` argument on a cluster: the hold's deadline (ms), 'counted' (the claim won
    already) or 'capped'. Raise LedgerRefusal when the player's bucket lost its state."""
    key = player_key(r.user_id)
    values = {"claim_id": r.claim_id, "task_id": r.task_id, "player_cap": cap, "lease_ms": HOLD_LEASE_MS,
              "stale_ms": HOLD_STALE_MS}
    for _ in range(_ROUNDS):
        answer: Any = await ledger.call(lambda c: ledger.run_script(c, "reserve", [key, epoch_key(id_bucket(r.user_id))],
                                                                   [values[arg] for arg in RESERVE_ARGS]))
        if answer[0] == "state_lost":
            raise LedgerRefusal("the ledger's state of this player's wins was lost (its Redis node was emptied); their "
                                "claims wait for `geo-service ledger reconcile --repair`")
        if answer[0] != "stale":
            return str(answer[1]) if answer[0] == "held" else str(answer[0])
        for claim_id, hold in zip(answer[1::2], answer[2::2]):
            task_id = int(hold.split("\t")[1])
            await confirm(ledger, r.user_id, claim_id, await _won(ledger, task_id, claim_id), hold)
    return "capped"  # holds keep going stale as fast as they are resolved: refuse, nothing settled


async def confirm(ledger: Calls, user_id: str, claim_id: str, won: bool, hold: str = "") -> int:
    """Settle a hold by whether its claim won; return the player's wins and holds after it. `hold`: the hold as it
    must still be (a stale one), '' for the claim's own process."""
    return int(await ledger.call(lambda c: ledger.run_script(
        c, "confirm", [player_key(user_id)], [claim_id, "won" if won else "", hold])))


async def _won(ledger: Calls, task_id: int, claim_id: str) -> bool:
    """Return whether a held claim won (not: it lost, or never settled; its outcome is kept longer than a hold)."""
    raw: Any = await ledger.call(lambda c: c.get(outcome_key(task_id, claim_id)))
    if raw is not None:
        return bool(raw.startswith("won\t"))
    if not ledger.record_db:
        return False
    record = await ledger.store().find(claim_id)
    return record is not None and record.outcome == "won"
