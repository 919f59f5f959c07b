"""`geo-console serve` (the placement console), `geo-console operator add` and `geo-console export`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
from aiohttp import web

from geo_service.config import add_settings_flags, cli_settings
from geo_service.web.logs import configure_logging
from geo_service.web.routing import MAX_LINE_BYTES
from loaders.errors import LoaderError
from placement.app import create_app
from placement.auth import ROLES, OperatorsFileError, add_operator, demo_problems, read_operators
from placement.db import Db
from placement.folders import export
from placement.settings import ConsoleSettings

ENV_PREFIX = "GEODROP_CONSOLE_"
TOKEN_ENV = "GEODROP_CONSOLE_NEW_TOKEN"


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="geo-console", description="The placement console: operators place tasks on "
                                  "the map, check them by the build's rules, preview and publish.",
                                  epilog=f"Settings: defaults < --config TOML < environment ({ENV_PREFIX}<FIELD>) < flags. "
                                         "Exit codes: 0 done; 2 bad input or settings (one line per problem).")
    sub = top.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="Serve the console page and its API.")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                       help="Level of the JSON log lines on stderr (default info).")
    add_settings_flags(serve, ConsoleSettings)
    op = sub.add_parser("operator", help="Add an operator (or give one a new token) in the operators file.",
                        description=f"Prints the operator's token once; the file keeps only its SHA-256. The token is "
                                    f"new and random unless {TOKEN_ENV} gives one (never a flag: a process list shows "
                                    "flags). A new token ends the operator's open sessions.")
    op.add_argument("action", choices=("add",), help="What to do.")
    op.add_argument("--name", required=True, help="The operator's name, as the audit shows it (1-64 of A-Z a-z 0-9 _ . @ -).")
    op.add_argument("--role", required=True, choices=ROLES, help="admin: edit, publish, roll back; viewer: read and preview.")
    op.add_argument("--operators", default="var/operators.json", help="The operators file (default var/operators.json).")
    ex = sub.add_parser("export", help="Write a draft out as a data folder (what geo-snapshot build --source reads).")
    ex.add_argument("--draft", default=os.environ.get(f"{ENV_PREFIX}DRAFT"),
                    help=f"The draft: sqlite:///PATH or mysql://user:pass@host:port/db (default {ENV_PREFIX}DRAFT: a "
                         "password in a flag shows in process lists).")
    ex.add_argument("--out", required=True, help="The folder to write (created; its data files are replaced).")
    return top


def cmd_operator(args: argparse.Namespace) -> int:
    try:
        token = add_operator(Path(args.operators), args.name, args.role, os.environ.get(TOKEN_ENV))
    except ValueError as exc:
        print(f"geo-console operator: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    if not args.draft:
        print(f"geo-console export: give --draft or {ENV_PREFIX}DRAFT", file=sys.stderr)
        return 2
    db = Db(args.draft)
    try:
        db.check()
    except ValueError as exc:
        print(f"geo-console export: --draft: {exc}", file=sys.stderr)
        return 2
    counts = asyncio.run(db.read(lambda cur: export(cur, Path(args.out))))
    print(orjson.dumps(counts).decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "operator":
            return cmd_operator(args)
        if args.command == "export":
            return cmd_export(args)
        settings = cli_settings(ConsoleSettings, ENV_PREFIX, args, "geo-console")
        if settings is None:
            return 2
        try:
            problems = demo_problems(read_operators(settings.operators), settings.host)
        except OperatorsFileError as exc:
            problems = [str(exc)]
        for problem in problems:
            print(f"geo-console: {problem}", file=sys.stderr)
        if problems:
            return 2
        configure_logging(args.log_level)
        logging.getLogger("geodrop.console").info("console serving", extra={"port": settings.port})
        web.run_app(create_app(settings), host=settings.host, port=settings.port, access_log=None, print=None,
                    max_line_size=MAX_LINE_BYTES, max_field_size=MAX_LINE_BYTES)
    except LoaderError as exc:
        print(f"geo-console {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0
