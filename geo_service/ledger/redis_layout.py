"""The Redis ledger's key layout and its scripts' text and arguments (redis.py runs them).

Key layout (version LAYOUT). Tasks fall into REDIS_BUCKETS buckets (task_id mod REDIS_BUCKETS); every key of a
bucket carries its hash tag, so one claim touches one slot and buckets spread over a cluster's nodes:

    gd:{b<k>}:t:<task>             hash  q:/i:/r:/s:/n:<prize> quota, issued, rate (thousandths/s, -1 none),
                                         rate slice, issued in that slice; off (the kill switch), won_at
    gd:{b<k>}:w:<task>             hash  user -> wins (the win cap)
    gd:{b<k>}:c:<task>:<claim_id>  str   the claim's outcome and the claim it belongs to; kept until its record is
                                         in the record database, then record_ttl_s + OUTCOME_MARGIN_S (ship.py)
    gd:{b<k>}:flow                 stream  every claim's record: the flow log shipped into MySQL (ship.py)
    gd:{b<k>}:changed              zset  task -> ms of its last counter change (the collector's delta read)
    gd:{b<k>}:changes              stream  live quota/rate changes
    gd:{b<k>}:epoch                str   the ledger's epoch: the bucket holds the ledger's state (a node emptied by a
                                         flush or a restart without its AOF has none, and its buckets take no claims)
    gd:{b<j>}:bind:<claim_id>      str   "<user>\t<task>\t<poi>": the claim the id was first used for (another
                                         player's, task's or POI's use is refused); j = id_bucket(claim_id); kept
                                         until its record is shipped, then record_ttl_s
    gd:{b<j>}:seen                 string  a Bloom filter of every claim id the bucket has bound (claim_ids.lua): an id
                                         it may have seen, with no binding left, is looked up in the record database
    gd:{b<j>}:p:<user>             hash  the player's wins in the event (player_win_cap): w:<claim_id> "<task>\t<prize>"
                                         per win, and
                                         on a cluster h:<claim_id> "<deadline ms>\t<task>\t<poi>" per claim holding a
                                         place while it settles on its task's node (reserve.lua); j = id_bucket(user)
    gd:{u:<user>}:pos              hash  the player's last claimed position (the movement check)
    gd:tasks (zset of task ids, the complete read), gd:flags (disabled tasks), gd:change_seq, gd:layout

A claim id is thus remembered as long as its record: in Redis while its binding lives, and after that by the
filter, which sends the claim to the record database instead of a fresh settlement.

Nothing here talks to Redis: these are the names both the ledger (redis.py) and the shipper (ship.py) use.
"""

from __future__ import annotations

import zlib
from importlib import resources

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.interface import ClaimRequest
from geo_service.ledger.records import FLOW_FIELDS
from geo_service.snapshot.grid import EARTH_RADIUS_M

LAYOUT = f"geodrop-ledger 2 buckets={REDIS_BUCKETS}"


def bucket_tag(task_id: int) -> str:
    return f"{{b{task_id % REDIS_BUCKETS}}}"


def task_key(task_id: int) -> str:
    return f"gd:{bucket_tag(task_id)}:t:{task_id}"


def id_bucket(claim_id: str) -> int:
    """Return the bucket a claim id's binding and filter live in (MySQL's CRC32() gives the same number)."""
    return zlib.crc32(claim_id.encode()) % REDIS_BUCKETS


def bind_key(claim_id: str) -> str:
    """Return the key binding a claim id to its claim (claim ids have no braces)."""
    return f"gd:{{b{id_bucket(claim_id)}}}:bind:{claim_id}"


def player_key(user_id: str) -> str:
    """Return the key of a player's wins in the event: in a bucket (by the id's CRC-32, as claim ids), so its
    epoch guards it like the tasks' keys (user ids have no braces)."""
    return f"gd:{{b{id_bucket(user_id)}}}:p:{user_id}"


def wins_key(task_id: int) -> str:
    return f"gd:{bucket_tag(task_id)}:w:{task_id}"


def outcome_key(task_id: int, claim_id: str) -> str:
    return f"gd:{bucket_tag(task_id)}:c:{task_id}:{claim_id}"


def epoch_key(bucket: int) -> str:
    return bucket_key(bucket, "epoch")


def claim_of(r: ClaimRequest) -> str:
    """Return what a claim id is bound to: its player, task and POI."""
    return f"{r.user_id}\t{r.task_id}\t{r.poi_id}"


def owner_of(outcome: str) -> str:
    """Return the claim a stored outcome ("<outcome>\t<prize>\t<claim_of>") belongs to."""
    return outcome.split("\t", 2)[2]


def entry_id(text: str) -> tuple[int, int]:
    """Return a stream entry id "<ms>-<seq>" as numbers, which compare in the stream's order."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


SHIP_GROUP = "ship"  # the consumer group every flow stream is shipped through (ship.py)


def bucket_key(bucket: int, name: str) -> str:
    """Return a bucket's key `name` (flow, changed, changes, epoch, seen)."""
    return f"gd:{{b{bucket}}}:{name}"


# The movement and claim scripts' arguments, in ARGV order: each script reads them by name from the table
# `args` that script() prepends; the claim's prize types in draw order follow, from ARGV[FIRST_PRIZE].
MOVE_ARGS = ("lat", "lng", "at_s", "max_speed_mps", "position_ttl_s")
BIND_ARGS = ("claim_id", "claim_of", "checked", "filter_bits")
CLAIM_ARGS = ("claim_id", "user_id", "task_id", "poi_id", "win_cap", "plausible", "bound", "checked", "filter_bits",
              "flow_max", "player_cap", "player", *MOVE_ARGS)
RESERVE_ARGS = ("claim_id", "task_id", "poi_id", "player_cap", "lease_ms", "stale_ms")
# A cluster's claim holds its place under the player's event cap for HOLD_LEASE_MS: its task's node settles it only
# before then (by that node's clock), and a hold left (its process killed) is looked up and resolved once
# HOLD_STALE_MS more have passed (by the player's node's clock): node clocks must agree within HOLD_STALE_MS.
HOLD_LEASE_MS = 5_000
HOLD_STALE_MS = 10_000
# A shipped claim's outcome is kept this much longer than its binding: while a binding lives, so does its outcome,
# and a claim id whose binding is gone is answered from the record database (never settled afresh).
OUTCOME_MARGIN_S = 3_600
# The claim scripts' answers that are no outcome.
CLAIM_ID_TAKEN = "claim_id_taken"  # the id is bound to another claim: nothing written
ASK_RECORD = "ask_record"  # the id may have been used before and its binding is gone: the record database tells
STATE_LOST = "state_lost"  # the bucket has no epoch: its node lost the ledger's state (or was never given it)
FLOW_FULL = "flow_full"  # the bucket's flow log is at its ceiling: nothing is shipping it
HOLD_EXPIRED = "hold_expired"  # the claim's hold on the player's cap ran out before its task's node settled it
_SCRIPT_ARGS = {"claim": CLAIM_ARGS, "movement": MOVE_ARGS, "bind": BIND_ARGS, "reserve": RESERVE_ARGS}
_PRELUDES = {"claim": ("position.lua", "claim_ids.lua"), "movement": ("position.lua",), "bind": ("claim_ids.lua",),
             "seen": ("claim_ids.lua",), "remember": ("claim_ids.lua",), "read_tasks": ("task_rows.lua",),
             "counters_at": ("task_rows.lua",)}


def script(name: str) -> str:
    """Return a script's text. The claim, movement and bind scripts get their arguments by name, the earth's
    radius and the flow log's field names from here; the movement check (position.lua) and the claim ids'
    binding and filter (claim_ids.lua) are shared by the scripts that need them."""
    lua = resources.files("geo_service.ledger").joinpath("lua")
    names = _SCRIPT_ARGS.get(name, ())
    bound = ", ".join(f"{arg} = ARGV[{i}]" for i, arg in enumerate(names, 1))
    flow = ", ".join(f"'{name}'" for name in FLOW_FIELDS)
    prelude = (f"local EARTH_RADIUS_M = {EARTH_RADIUS_M!r}\nlocal args = {{{bound}}}\n"
               f"local FIRST_PRIZE = {len(names) + 1}\nlocal FLOW_FIELDS = {{{flow}}}\n") if names else ""
    shared = "".join(lua.joinpath(part).read_text() for part in _PRELUDES.get(name, ()))
    return prelude + shared + lua.joinpath(f"{name}.lua").read_text()
