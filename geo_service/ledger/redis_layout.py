"""The Redis ledger's key layout and its scripts' text and arguments (redis.py runs them).

Key layout (version LAYOUT). Tasks fall into REDIS_BUCKETS buckets (task_id mod REDIS_BUCKETS); every key of a
bucket carries its hash tag, so one claim touches one slot and buckets spread over a cluster's nodes:

    gd:{b<k>}:t:<task>             hash  q:/i:/r:/s:/n:<prize> quota, issued, rate (thousandths/s, -1 none),
                                         rate slice, issued in that slice; off (the kill switch), won_at
    gd:{b<k>}:w:<task>             hash  user -> wins (the win cap)
    gd:{b<k>}:c:<task>:<claim_id>  str   the claim's outcome and the claim it belongs to, kept record_ttl_s
    gd:{b<k>}:flow                 stream  every claim's record: the flow log shipped into MySQL (ship.py)
    gd:{b<k>}:changed              zset  task -> ms of its last counter change (the collector's delta read)
    gd:{b<k>}:changes              stream  live quota/rate changes
    gd:{u:<user>}:pos              hash  the player's last claimed position (the movement check)
    gd:{c:<claim_id>}:bind         str   "<user>\t<task>\t<poi>": the claim the id was first used for, kept
                                         record_ttl_s + BIND_MARGIN_S (another player's or task's use is refused)
    gd:tasks (zset of task ids, the complete read), gd:flags (disabled tasks), gd:change_seq, gd:layout

Nothing here talks to Redis: these are the names both the ledger (redis.py) and the shipper (ship.py) use.
"""

from __future__ import annotations

from importlib import resources

from geo_service.dsn import REDIS_BUCKETS
from geo_service.ledger.interface import ClaimRequest
from geo_service.ledger.records import FLOW_FIELDS
from geo_service.snapshot.grid import EARTH_RADIUS_M

LAYOUT = f"geodrop-ledger 1 buckets={REDIS_BUCKETS}"


def bucket_tag(task_id: int) -> str:
    return f"{{b{task_id % REDIS_BUCKETS}}}"


def task_key(task_id: int) -> str:
    return f"gd:{bucket_tag(task_id)}:t:{task_id}"


def bind_key(claim_id: str) -> str:
    """Return the key binding a claim id to its claim (claim ids have no braces: the tag is the id)."""
    return f"gd:{{c:{claim_id}}}:bind"


def claim_of(r: ClaimRequest) -> str:
    """Return what a claim id is bound to: its player, task and POI."""
    return f"{r.user_id}\t{r.task_id}\t{r.poi_id}"


def owner_of(outcome: str) -> str | None:
    """Return the claim a stored outcome ("<outcome>\t<prize>\t<claim_of>") belongs to; None in outcomes settled
    before claim ids were bound, which answer as they did."""
    parts = outcome.split("\t", 2)
    return parts[2] if len(parts) == 3 else None


def bucket_key(bucket: int, name: str) -> str:
    """Return a bucket's key `name` (flow, changed, changes)."""
    return f"gd:{{b{bucket}}}:{name}"


# The movement and claim scripts' arguments, in ARGV order: each script reads them by name from the table
# `args` that script() prepends; the claim's prize types in draw order follow, from ARGV[FIRST_PRIZE].
MOVE_ARGS = ("lat", "lng", "at_s", "max_speed_mps", "position_ttl_s")
CLAIM_ARGS = ("claim_id", "user_id", "task_id", "poi_id", "win_cap", "plausible", "bound", "record_ttl_s", "bind_ttl_s",
              *MOVE_ARGS)
# A binding is kept this much longer than its claim's outcome: a cluster binds before it settles, so the
# binding must not be the first to go.
BIND_MARGIN_S = 3_600
_SCRIPT_ARGS = {"claim": CLAIM_ARGS, "movement": MOVE_ARGS}


def script(name: str) -> str:
    """Return a script's text. The claim and movement scripts get their arguments by name, the earth's radius
    and the flow log's field names from here, and share the movement check (position.lua)."""
    lua = resources.files("geo_service.ledger").joinpath("lua")
    names = _SCRIPT_ARGS.get(name)
    if names is None:
        return lua.joinpath(f"{name}.lua").read_text()
    bound = ", ".join(f"{arg} = ARGV[{i}]" for i, arg in enumerate(names, 1))
    flow = ", ".join(f"'{name}'" for name in FLOW_FIELDS)
    prelude = (f"local EARTH_RADIUS_M = {EARTH_RADIUS_M!r}\nlocal args = {{{bound}}}\n"
               f"local FIRST_PRIZE = {len(names) + 1}\nlocal FLOW_FIELDS = {{{flow}}}\n")
    return prelude + lua.joinpath("position.lua").read_text() + lua.joinpath(f"{name}.lua").read_text()
