"""`geo-collector run` and `geo-collector task enable|disable TASK_ID`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from aiohttp import web

from collector.app import create_app
from collector.settings import CollectorSettings
from geo_service.ledger import LedgerError, open_ledger
from geo_service.logs import configure_logging
from geo_service.settings import add_settings_flags, cli_settings

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
                          description="Sets the task's flag in the ledger; the collector applies it within one tick and "
                                      "the services drop or restore the task on their next status poll.")
    task.add_argument("action", choices=("enable", "disable"), help="What to do with the task.")
    task.add_argument("task_id", type=int, help="The task's id.")
    add_settings_flags(task, CollectorSettings)
    return top


async def _set_flag(dsn: str, task_id: int, enabled: bool) -> None:
    ledger = open_ledger(dsn)
    try:
        await ledger.set_enabled(task_id, enabled)
    finally:
        await ledger.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = cli_settings(CollectorSettings, ENV_PREFIX, args, "geo-collector")
    if settings is None:
        return 2
    if args.command == "task":
        try:
            asyncio.run(_set_flag(settings.ledger, args.task_id, args.action == "enable"))
        except LedgerError as exc:
            print(f"geo-collector task: {exc}", file=sys.stderr)
            return 2
        print(f"task {args.task_id} {args.action}d")
        return 0
    configure_logging(args.log_level)
    logging.getLogger("geodrop.collector").info("collector serving", extra={"port": settings.port})
    web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None, print=None)
    return 0
