"""`geo-service serve`: flags, environment and TOML -> settings -> N worker processes sharing the port."""

from __future__ import annotations

import argparse
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

from aiohttp import web

from geo_service.app import create_app
from geo_service.logs import configure_logging
from geo_service.settings import ServiceSettings, SettingsError, documented, load_settings

ENV_PREFIX = "GEODROP_SERVICE_"
log = logging.getLogger("geodrop.service")
# aiohttp refuses request lines over 8 KiB with a plain-text 400 before any handler runs; a larger
# limit lets the middleware answer over-long queries with the JSON error shape (414) instead.
_MAX_LINE_BYTES = 64 * 1024


def run_worker(settings: ServiceSettings, log_level: str) -> None:
    """Serve in this process until SIGINT/SIGTERM."""
    configure_logging(log_level, worker=settings.worker_id)
    log.info("worker serving", extra={"host": settings.host, "port": settings.port, "pid": os.getpid()})
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        reuse_port=True,
        shutdown_timeout=settings.shutdown_timeout_s,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        max_line_size=_MAX_LINE_BYTES,
        max_field_size=_MAX_LINE_BYTES,
        print=None,
    )


def supervise(settings: ServiceSettings, log_level: str) -> int:
    """Run settings.workers worker processes; restart one that dies; stop all on SIGINT/SIGTERM."""
    ctx = mp.get_context("spawn")
    stopping = False

    def start(i: int) -> Any:
        proc = ctx.Process(target=run_worker, args=(replace(settings, worker_id=i), log_level), name=f"geo-service-{i}")
        proc.start()
        return proc

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGTERM if signum != signal.SIGINT else signal.SIGINT)

    def forward_hup(_signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive():
                os.kill(p.pid, signal.SIGHUP)

    procs = [start(i) for i in range(settings.workers)]
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, forward_hup)
    while not stopping:
        for i, p in enumerate(procs):
            if not p.is_alive() and not stopping:
                log.error("worker died; restarting it", extra={"worker": i, "exitcode": p.exitcode})
                time.sleep(0.5)  # no hot restart loop if a worker dies at start-up
                procs[i] = start(i)
        time.sleep(0.2)
    for p in procs:
        p.join(timeout=settings.shutdown_timeout_s + 5)
    return 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="geo-service", description="geodrop's map-polling service.")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve", help="Serve /v1/nearby on the live snapshot.",
        description=f"Settings come from defaults < --config TOML < environment ({ENV_PREFIX}<FIELD>) < these flags.")
    serve.add_argument("--config", type=Path, help="TOML file of settings (keys named as the flags, with underscores).")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="Log level of the JSON log lines on stderr (default info; requests are not logged).")
    for name, default, help_text in documented(ServiceSettings):
        if name == "worker_id":
            continue
        if isinstance(default, bool):
            serve.add_argument(_flag(name), dest=name, action="store_const", const=True, help=f"{help_text} (default off)")
        else:
            shown = "(set)" if name == "admin_token" else default
            serve.add_argument(_flag(name), dest=name, help=f"{help_text} (default {shown})")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    overrides = {name: getattr(args, name, None) for name, _, _ in documented(ServiceSettings) if name != "worker_id"}
    try:
        settings = load_settings(ServiceSettings, ENV_PREFIX, args.config, os.environ, overrides)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"geo-service: {problem}", file=sys.stderr)
        return 2
    configure_logging(args.log_level)
    if settings.workers == 1:
        run_worker(settings, args.log_level)
        return 0
    return supervise(settings, args.log_level)
