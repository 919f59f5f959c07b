"""`geo-service serve`: flags, environment and TOML -> settings -> N worker processes sharing the port."""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvloop
from aiohttp import web

from geo_service.app import create_app, seeds_of
from geo_service.config import add_settings_flags, cli_settings
from geo_service.ledger import Difference, LedgerError, Seed, open_ledger
from geo_service.ledger.records import to_move
from geo_service.settings import ServiceSettings
from geo_service.snapshot.folder import current_seq
from geo_service.snapshot.format import SnapshotError, read_tables
from geo_service.tokens import mint
from geo_service.web.load import raise_open_files_limit
from geo_service.web.logs import configure_logging
from geo_service.web.routing import MAX_LINE_BYTES

ENV_PREFIX = "GEODROP_SERVICE_"
log = logging.getLogger("geodrop.service")
_LINGER_S = 1.0
_BACKLOG = 4096


def run_worker(settings: ServiceSettings, log_level: str) -> None:
    """Serve in this process until SIGINT/SIGTERM."""
    configure_logging(log_level, worker=settings.worker_id)
    files = raise_open_files_limit()
    log.info("worker serving", extra={"host": settings.host, "port": settings.port, "pid": os.getpid(), "max_open_files": files})
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        reuse_port=True,
        shutdown_timeout=settings.shutdown_timeout_s,
        keepalive_timeout=settings.keepalive_timeout_s,
        # A request answered before its body was read (a 401, a 408 for a body that dripped) is drained for
        # at most this long before the connection closes, not aiohttp's 10 s: a slow-drip client lets go soon.
        lingering_time=_LINGER_S,
        # aiohttp's 128 drops connects of a crowd arriving at once (phones after an outage), whose SYN retries
        # then come a second or more later; the kernel caps this at net.core.somaxconn.
        backlog=_BACKLOG,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        max_line_size=MAX_LINE_BYTES,
        max_field_size=MAX_LINE_BYTES,
        print=None,
        loop=uvloop.new_event_loop() if settings.uvloop else None,
    )


def supervise(settings: ServiceSettings, log_level: str) -> int:
    """Run settings.workers worker processes; restart one that dies; stop all on SIGINT/SIGTERM."""
    ctx = mp.get_context("spawn")
    stopping: int | None = None  # the signal that asked to stop

    def start(i: int) -> Any:
        proc = ctx.Process(target=run_worker, args=(replace(settings, worker_id=i), log_level), name=f"geo-service-{i}")
        proc.start()
        return proc

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, stopping)

    def forward_hup(_signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    procs = [start(i) for i in range(settings.workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, forward_hup)
    while stopping is None:
        for i, p in enumerate(procs):
            if not p.is_alive() and stopping is None:
                log.error("worker died; restarting it", extra={"worker": i, "exitcode": p.exitcode})
                time.sleep(0.5)  # no hot restart loop if a worker dies at start-up
                procs[i] = start(i)
                if stopping is not None:  # the stop came while it started, and passed it by
                    os.kill(procs[i].pid, stopping)
        time.sleep(0.2)
    reap(procs, settings.shutdown_timeout_s + 5)
    return 0


def reap(procs: list[Any], grace_s: float) -> None:
    """Wait for stopping workers; kill one still running past `grace_s`: left, it would hold the port, and this
    process's exit would wait on it for good (multiprocessing joins its children at exit)."""
    for p in procs:
        p.join(timeout=grace_s)
        if p.is_alive():
            log.error("worker did not stop; killing it", extra={"pid": p.pid})
            p.kill()
            p.join()


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="geo-service", description="geodrop's map-polling and claims service.",
                                  epilog=f"Settings come from defaults < --config TOML < environment ({ENV_PREFIX}<FIELD>) "
                                  "< flags.")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve /v1/nearby and /v1/claims on the live snapshot.")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="Log level of the JSON log lines on stderr (default info; requests are not logged).")
    add_settings_flags(serve, ServiceSettings)
    token = sub.add_parser("token", help="Mint a player token (for tests and demos), signed with token_secret.")
    token.add_argument("--user", required=True, help="The player's user id: 1-64 of A-Z a-z 0-9 _ -.")
    add_settings_flags(token, ServiceSettings)
    ledger = sub.add_parser("ledger", help="Ledger maintenance.")
    ledger_sub = ledger.add_subparsers(dest="ledger_command", required=True)
    reconcile = ledger_sub.add_parser(
        "reconcile", help="Compare prize counters with won claims; exit 1 if any differ.",
        description="Print every counter whose issued count differs from its won claims, and exit 1 if any "
                    "does (0 when clean). Counters and claims are read as of one moment (per bucket on Redis), so it "
                    "may run while claims settle and the flow log ships. On a Redis ledger the won claims are those "
                    "shipped into --record-db plus those still in the flow streams, and buckets whose node lost the "
                    "ledger's state (they take no claims) are listed too.")
    reconcile.add_argument("--repair", action="store_true", help=(
        "Move each counter below its won claims up by the difference (claims settled meanwhile keep theirs), and "
        "restore Redis buckets that lost their state from the record: counters from the live snapshot in "
        "--snapshots, issued counts, players' wins and the claim-id filter from --record-db; then those buckets "
        "take claims again."))
    reconcile.add_argument("--lower", action="store_true", help=(
        "With --repair, also move each counter above its won claims down. Not by default: a counter above its "
        "records may be right where records were lost (a flow log deleted before shipping), and lowering it issues "
        "those prizes again; lower only a counter you know was raised by mistake."))
    add_settings_flags(reconcile, ServiceSettings)
    init = ledger_sub.add_parser(
        "init", help="Give a new, empty Redis ledger its epoch (one with --record-db set gets it on first use).",
        description="A Redis ledger's buckets hold an epoch, which a node that lost its state no longer has: its "
                    "claims are refused rather than settled on counters seeded afresh. With --record-db the first "
                    "service to start gives a new ledger its epoch (the record database says whether it is new); "
                    "without one, this command is the operator's word that it is new. It does nothing where every bucket "
                    "holds the epoch, and refuses where only some do, or the record database knows an epoch or holds "
                    "claims (restore that ledger with `ledger reconcile --repair` instead).")
    add_settings_flags(init, ServiceSettings)
    return top


def cmd_token(settings: ServiceSettings, args: argparse.Namespace) -> int:
    try:
        print(mint(args.user, settings.token_secret, int(time.time()) + settings.token_ttl_s))
    except ValueError as exc:
        print(f"geo-service token: {exc}", file=sys.stderr)
        return 2
    return 0


async def _reconcile(settings: ServiceSettings, repair: bool, lower: bool) -> list[Difference]:
    ledger = open_ledger(settings.ledger_dsn, settings.record_db)
    try:
        return await ledger.reconcile(repair, _live_seeds(settings.snapshots) if repair else (), lower)
    finally:
        await ledger.close()


def _live_seeds(snapshots: Path) -> list[Seed]:
    """Return the counters of the live snapshot's tasks (none without one: a restore then needs counters the
    services have made)."""
    seq = current_seq(snapshots)
    return [] if seq is None else seeds_of(read_tables(snapshots / str(seq))[0])


async def _init(settings: ServiceSettings) -> None:
    ledger = open_ledger(settings.ledger_dsn, settings.record_db)
    try:
        await ledger.init()
    finally:
        await ledger.close()


def cmd_ledger(settings: ServiceSettings, args: argparse.Namespace) -> int:
    if args.ledger_command == "init":
        try:
            asyncio.run(_init(settings))
        except LedgerError as exc:
            print(f"geo-service ledger init: {exc}", file=sys.stderr)
            return 2
        print("the ledger holds its epoch")
        return 0
    try:
        if args.lower and not args.repair:
            raise LedgerError("--lower goes with --repair")
        diffs = asyncio.run(_reconcile(settings, args.repair, args.lower))
    except (LedgerError, SnapshotError) as exc:
        print(f"geo-service ledger reconcile: {exc}", file=sys.stderr)
        return 2
    moved = set(to_move(diffs, args.lower)) if args.repair else set()
    for d in diffs:
        note = "  (repaired)" if d in moved else "  (left: above its claims; --lower moves it)" if args.repair else ""
        print(f"task {d.task_id} {d.prize_type}: counter issued {d.issued}, won claims {d.won_claims}{note}")
    print(f"{len(diffs)} counter(s) differ from their claims" if diffs else "counters match claims")
    return 1 if diffs else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = cli_settings(ServiceSettings, ENV_PREFIX, args, "geo-service")
    if settings is None:
        return 2
    if args.command == "token":
        return cmd_token(settings, args)
    if args.command == "ledger":
        return cmd_ledger(settings, args)
    configure_logging(args.log_level)
    if settings.workers == 1:
        run_worker(settings, args.log_level)
        return 0
    return supervise(settings, args.log_level)
