"""`geo-collector run`, `geo-collector task enable|disable TASK_ID` and `geo-collector prize set TASK PRIZE`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

import orjson
from aiohttp import web

from collector.app import create_app
from collector.settings import CollectorSettings
from collector.views import change_json
from delivery.channels import ChannelsError, load_channels
from geo_service.config import add_settings_flags, cli_settings
from geo_service.ledger import LedgerError, PrizeChange, PrizeChangeRefused, open_ledger
from geo_service.ledger.rates import UNLIMITED, rate_milli
from geo_service.nearby.task_status import iso_utc
from geo_service.snapshot.format import MAX_RATE_PER_S
from geo_service.web.load import raise_open_files_limit
from geo_service.web.logs import configure_logging
from geo_service.web.routing import MAX_LINE_BYTES

ENV_PREFIX = "GEODROP_COLLECTOR_"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="geo-collector", description="District-level remaining counts and task status.",
                                  epilog=f"Settings: defaults < --config TOML < environment ({ENV_PREFIX}<FIELD>) < flags.")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Tick over the ledger and serve the views (dashboard feed, task status).")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                     help="Level of the JSON log lines on stderr (default info).")
    add_settings_flags(run, CollectorSettings)
    task = sub.add_parser("task", help="The kill switch: enable or disable a task without a rebuild.",
                          description="Sets the task's flag in the ledger, which claims obey from that moment (no win "
                                      "follows a disable, whether or not the collector is up), and prints the time of "
                                      "the task's last win; the services drop or restore the task on their maps within "
                                      "a tick and a status poll.")
    task.add_argument("action", choices=("enable", "disable"), help="What to do with the task.")
    task.add_argument("task_id", type=int, help="The task's id.")
    add_settings_flags(task, CollectorSettings)
    prize = sub.add_parser("prize", help="Live quota and rate control: change a prize without a rebuild.",
                           description="`prize set TASK PRIZE` changes a prize's quota and/or issue rate in the ledger "
                                       "now; every service host enforces it on its next claim and the collector shows "
                                       "it, with its sequence number, within a tick. A quota never goes below what is "
                                       "issued. A live change wins over later snapshots: they only seed prizes the "
                                       "ledger lacks.")
    prize_sub = prize.add_subparsers(dest="prize_command", required=True)
    prize_set = prize_sub.add_parser("set", help="Change a prize's quota and/or rate.")
    prize_set.add_argument("task_id", type=int, help="The task's id.")
    prize_set.add_argument("prize_type", help="The prize type, e.g. cash.")
    prize_set.add_argument("--quota", type=int, help="The new quota (at least what is issued).")
    prize_set.add_argument("--rate", help="The new issue rate per second, or `none` for no limit.")
    add_settings_flags(prize_set, CollectorSettings)
    return top


async def _set_flag(dsn: str, record_db: str, task_id: int, enabled: bool) -> float | None:
    ledger = open_ledger(dsn, record_db)  # a Redis ledger keeps the switch in the record too
    try:
        return await ledger.set_enabled(task_id, enabled)
    finally:
        await ledger.close()


def _rate_arg(text: str | None) -> int | None:
    if text is None:
        return None
    if text.lower() == "none":
        return UNLIMITED
    rate = float(text)  # ValueError: reported by the caller
    if not 0 <= rate <= MAX_RATE_PER_S:
        raise ValueError(text)
    return rate_milli(rate)


async def _set_prize(dsn: str, task_id: int, prize_type: str, quota: int | None, rate: int | None) -> PrizeChange:
    ledger = open_ledger(dsn)
    try:
        return await ledger.set_prize(task_id, prize_type, quota, rate)
    finally:
        await ledger.close()


def cmd_prize(settings: CollectorSettings, args: argparse.Namespace) -> int:
    try:
        rate = _rate_arg(args.rate)
    except ValueError:
        print(f"geo-collector prize set: --rate must be a number in [0, 1e9] or none; got {args.rate!r}", file=sys.stderr)
        return 2
    if args.quota is None and rate is None:
        print("geo-collector prize set: give --quota and/or --rate", file=sys.stderr)
        return 2
    if args.quota is not None and args.quota < 0:
        print("geo-collector prize set: --quota must be 0 or more", file=sys.stderr)
        return 2
    try:
        change = asyncio.run(_set_prize(settings.ledger, args.task_id, args.prize_type, args.quota, rate))
    except (LedgerError, PrizeChangeRefused) as exc:
        print(f"geo-collector prize set: {exc}", file=sys.stderr)
        return 2
    print(orjson.dumps(change_json(change)).decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = cli_settings(CollectorSettings, ENV_PREFIX, args, "geo-collector")
    if settings is None:
        return 2
    if args.command == "task":
        try:
            won_at = asyncio.run(_set_flag(settings.ledger, settings.record_db, args.task_id, args.action == "enable"))
        except LedgerError as exc:
            print(f"geo-collector task: {exc}", file=sys.stderr)
            return 2
        last = "no win yet" if won_at is None else f"last win at {iso_utc(won_at)}"
        print(f"task {args.task_id} {args.action}d; {last}" + (" (none can follow)" if args.action == "disable" else ""))
        return 0
    if args.command == "prize":
        return cmd_prize(settings, args)
    if settings.channels:
        try:
            load_channels(settings.channels)  # checked before serving: a bad file is exit 2, not a failed start
        except ChannelsError as exc:
            print(f"geo-collector: {exc}", file=sys.stderr)
            return 2
    configure_logging(args.log_level)
    # Every stream and status poll is a socket: the soft limit of 1024 would refuse them long before memory does.
    files = raise_open_files_limit()
    logging.getLogger("geodrop.collector").info("collector serving", extra={"port": settings.port, "max_open_files": files})
    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None, print=None,
                max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES)
    return 0
