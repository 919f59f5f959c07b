"""`geo-deliver`: run dispatchers, steer a channel, reconcile deliveries, run the demo partner."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from delivery.app import create_app, dispatching, make_dispatcher, selected
from delivery.channels import Channels, ChannelsError, load_channels, rate_problem
from delivery.partner import Partner
from delivery.settings import DeliverySettings
from geo_service.config import add_settings_flags, cli_settings
from geo_service.ledger import LedgerError, open_records
from geo_service.ledger.deliveries import CONFIGURED, DeliveryStore
from geo_service.web.logs import configure_logging
from geo_service.web.routing import MAX_LINE_BYTES

ENV_PREFIX = "GEODROP_DELIVER_"
PROGRAM = "geo-deliver"
T = TypeVar("T")
log = logging.getLogger("geodrop.delivery")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog=PROGRAM, description="Deliver won prizes to partners, exactly once in effect.",
                                  epilog=f"Settings: defaults < --config TOML < environment ({ENV_PREFIX}<FIELD>) < flags. "
                                         "Signing secrets: in the variables the channels file names (secret_env).")
    sub = top.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="Run a dispatcher: lease due deliveries, call the partners, record the answers.",
                         description="Runs until SIGTERM or Ctrl-C, then lets calls in flight finish and records them. "
                                     "Run as many as needed on as many hosts: each channel's rate holds across all.")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                     help="Level of the JSON log lines on stderr (default info).")
    add_settings_flags(run, DeliverySettings)
    channel = sub.add_parser("channel", help="Change a channel's rate or pause/resume it, live, on every dispatcher.",
                             description="Every dispatcher of the channel obeys within its next 100 ms slice. Prints the "
                                         "channel's shared state as JSON.")
    channel.add_argument("name", help="The channel's name, as in the channels file.")
    rate = channel.add_mutually_exclusive_group()
    rate.add_argument("--rate", type=float, help="The new rate per second (a live override of the file's).")
    rate.add_argument("--configured-rate", action="store_true", help="Drop the live override: the file's rate again.")
    pause = channel.add_mutually_exclusive_group()
    pause.add_argument("--pause", action="store_true", help="Stop sending on this channel (deliveries wait).")
    pause.add_argument("--resume", action="store_true", help="Send again.")
    add_settings_flags(channel, DeliverySettings)
    status = sub.add_parser("status", help="Print each channel's backlog, oldest pending, states and dead letters (JSON).")
    add_settings_flags(status, DeliverySettings)
    reconcile = sub.add_parser(
        "reconcile", help="Compare won claims, deliveries and partners' statements; exit 1 on any difference.",
        description="Lists won claims with no delivery, deliveries with no win, deliveries recorded delivered that a "
                    "partner's statement lacks, and statement entries with no win here. With --repair, makes the missing "
                    "deliveries and sends again what a partner lacks (the same delivery_id: a partner that had it "
                    "answers already_delivered). Exit 0 when all agree, 1 with a report otherwise, 2 on bad input.")
    reconcile.add_argument("--channel", metavar="NAME",
                           help="Reconcile this channel's prize types only (needed with --statement: a statement is "
                                "one partner's).")
    reconcile.add_argument("--statement", action="append", default=[], metavar="FILE",
                           help="The channel's partner's statement: the delivery ids it honoured, one a line "
                                "(repeatable; e.g. the demo partner's GET /statement/{channel}). An empty one is refused.")
    reconcile.add_argument("--repair", action="store_true", help="Re-drive what is missing (see above).")
    add_settings_flags(reconcile, DeliverySettings)
    partner = sub.add_parser("partner", help="Run the demo partner: a loopback wallet that honours the contract.",
                             description="Serves POST /deliver/{channel} for every channel of the channels file, "
                                         "signed with that channel's secret (from its secret_env).")
    partner.add_argument("--port", type=_port, default=8082, help="TCP port on 127.0.0.1 (default 8082).")
    partner.add_argument("--accounts-required", default="", metavar="CHANNELS",
                         help="Comma-separated channels that answer no_account until POST /accounts/{user_id}.")
    partner.add_argument("--channels", default="data/sample/channels.json", help="The channels file.")
    return top


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1-65535, got {text!r}")
    return int(text)


async def _with_store(settings: DeliverySettings, work: Callable[[DeliveryStore], Awaitable[T]]) -> T:
    runner = open_records(settings.ledger, settings.record_db)
    try:
        return await work(DeliveryStore(runner))
    finally:
        await runner.close()


def _statement(paths: Sequence[str]) -> set[str] | None:
    if not paths:
        return None
    ids: set[str] = set()
    for path in paths:
        for number, line in enumerate(Path(path).read_text().splitlines(), 1):
            text = line.strip()
            if text and not text.isascii():
                raise ChannelsError(f"{path}: line {number}: a delivery id is ASCII")
            if text:
                ids.add(text)
    if not ids:
        raise ChannelsError(f"{', '.join(paths)}: names no delivery id; refused (a failed download would re-send every "
                            "delivery)")
    return ids


async def _serve_dispatcher(settings: DeliverySettings, channels: Channels) -> None:
    dispatcher = make_dispatcher(settings, channels)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    log.info("dispatching", extra={"channels": [r.channel.name for r in dispatcher.runners]})
    if settings.port:
        runner = web.AppRunner(create_app(dispatcher), access_log=None, max_line_size=MAX_LINE_BYTES,
                               max_field_size=MAX_LINE_BYTES)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        await stopped.wait()
        await runner.cleanup()
    else:
        async with dispatching(dispatcher):
            await stopped.wait()


async def _serve_partner(port: int, partner: Partner) -> None:
    runner = web.AppRunner(partner.app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stopped = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await runner.cleanup()


def _print(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _command(args: argparse.Namespace, settings: DeliverySettings) -> int:
    if args.command == "channel":
        if args.rate is not None and (problem := rate_problem(args.rate)):
            raise ChannelsError(f"--rate {problem}")
        load_channels(settings.channels).named(args.name)
        paused = True if args.pause else (False if args.resume else None)
        rate = CONFIGURED if args.configured_rate else None if args.rate is None else round(args.rate * 1000)
        rate_now, paused_now = asyncio.run(_with_store(settings, lambda s: s.set_channel(args.name, rate, paused)))
        log.info("channel changed", extra={"audit": "channel", "channel": args.name, "rate_milli": rate_now,
                                           "paused": paused_now})
        _print({"channel": args.name, "rate_per_s": None if rate_now is None else rate_now / 1000, "paused": paused_now})
        return 0
    if args.command == "status":
        channels = load_channels(settings.channels)

        async def read(store: DeliveryStore) -> dict[str, Any]:
            return {c.name: await store.stats(c.prizes) for c in selected(channels, settings.channel_names())}

        _print(asyncio.run(_with_store(settings, read)))
        return 0
    statement = _statement(args.statement)
    if statement is not None and not args.channel:
        raise ChannelsError("--statement needs --channel: a statement is one partner's, and only its prizes are compared")
    prizes = load_channels(settings.channels).named(args.channel).prizes if args.channel else None
    report = asyncio.run(_with_store(settings, lambda s: s.reconcile(prizes, statement, args.repair)))
    _print({"differences": report.differences(), "repaired": args.repair, **{f: getattr(report, f) for f in report.__slots__}})
    return 1 if report.differences() else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "partner":
        configure_logging("info", process="partner")
        try:
            channels = load_channels(args.channels)
            required = frozenset(n.strip() for n in args.accounts_required.split(",") if n.strip())
            partner = Partner({c.name: c.secret() for c in channels.channels}, required)
        except ChannelsError as exc:
            print(f"{PROGRAM}: {exc}", file=sys.stderr)
            return 2
        try:
            with suppress(KeyboardInterrupt):
                asyncio.run(_serve_partner(args.port, partner))
        except OSError as exc:
            print(f"{PROGRAM}: port {args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        return 0
    configure_logging(getattr(args, "log_level", "warning"), process="dispatcher")
    settings = cli_settings(DeliverySettings, ENV_PREFIX, args, PROGRAM)
    if settings is None:
        return 2
    try:
        if args.command == "run":
            channels = load_channels(settings.channels)
            selected(channels, settings.channel_names())
            with suppress(KeyboardInterrupt):
                asyncio.run(_serve_dispatcher(settings, channels))
            return 0
        return _command(args, settings)
    except (ChannelsError, ValueError, OSError) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    except LedgerError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 3
