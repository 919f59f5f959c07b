"""`geo-snapshot`: build, inspect, query, publish and roll back snapshots; make synthetic data; import to MySQL."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, TypeVar

import orjson

from geo_service.nearby import Lookup, answer
from geo_service.snapshot.folder import current_seq, list_seqs, open_current, rollback
from geo_service.snapshot.format import ROW_ARRAYS, SnapshotError, StorageError, open_snapshot, read_manifest
from geo_service.snapshot.grid import Grid, GridError, H3Grid, SquareGrid, check_position
from geo_service.snapshot.origin import Origin, OriginError, open_origin, publish, rollback_origin
from loaders.build import BuildSettings, build, default_workers
from loaders.errors import LoaderError
from loaders.mysql_import import import_folder
from loaders.records import FieldError, parse_time
from loaders.sources import open_source
from loaders.synth import write_synthetic

DEFAULT_SNAPSHOTS = "snapshots"
T = TypeVar("T")


class TerminalProgress:
    """Progress on stderr when it is a terminal: one rewritten line, at most twice a second."""

    def __init__(self, stream: TextIO, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled and stream.isatty()
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, stage: str, done: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.5 and stage == "pois"):
            return
        self._last = now
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\r\033[K{stage}: {done:,}  ({rate / 1e6:.2f} M/s, {now - self.started:.1f} s)")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1; got {text!r}")
    return int(text)


def _grid(args: argparse.Namespace) -> Grid:
    if args.grid == "h3":
        return H3Grid(res=args.h3_res, radius=args.radius)
    return SquareGrid(cell_m=args.cell_m, radius=args.radius)


def bytes_per_row(manifest: dict[str, Any]) -> float | None:
    """Return the row arrays' bytes on disk (headers included) per row; None for an empty snapshot."""
    rows = manifest["files"]["cells.npy"]["rows"]
    size = sum(manifest["files"][f"{name}.npy"]["bytes"] for name in ROW_ARRAYS)
    return round(size / rows, 2) if rows else None


def summary(manifest: dict[str, Any], out: Path, seconds: float) -> str:
    """Return the one-screen account of a published build."""
    c, s = manifest["counts"], manifest["screening"]
    zones = _largest_zones(s["excluded_by_zone"])
    outside = s["outside_district"]
    lines = [
        f"published snapshot {manifest['seq']} -> {out / str(manifest['seq'])}  ({seconds:.1f} s)",
        f"source     {manifest['source']}",
        f"grid       {' '.join(f'{k}={v}' for k, v in manifest['grid'].items())}",
        f"pois       {c['pois_read']:,} read, {c['pois_kept']:,} kept, {c['pois_excluded']:,} in exclusion zones ({zones}), "
        f"{c['pois_unused']:,} in sets no task uses",
        f"rows       {c['rows']:,} (POI x task), sorted by cell, {bytes_per_row(manifest) or 0:g} bytes a row; "
        f"{c['coordinates_rounded']:,} coordinates rounded to 6 decimals",
        f"tasks      {c['tasks']:,} in {c['districts']:,} districts; "
        f"{len(outside)} with POIs outside their district ({sum(outside.values()):,} rows)",
        f"skipped    {s['skipped_problems']:,} bad field(s)",
        f"phases     {_phases(manifest['build'], seconds)}",
    ]
    lines += [f"           {e}" for e in s["skipped_examples"][:10]]
    return "\n".join(lines)


def _phases(build: dict[str, Any], seconds: float) -> str:
    """Return each phase's wall time; the publish is what the whole build took beyond the phases."""
    phases = {**build["phases_s"], "publish": max(seconds - sum(build["phases_s"].values()), 0.0)}
    return ", ".join(f"{name} {s:.1f} s" for name, s in phases.items()) + f" ({build['workers']} workers)"


def _largest_zones(by_zone: dict[str, int], shown: int = 3) -> str:
    """Return the zones that dropped most POIs, and how many more did (--json lists every one)."""
    dropping = sorted(((n, z) for z, n in by_zone.items() if n), reverse=True)
    text = ", ".join(f"{z}: {n:,}" for n, z in dropping[:shown]) or "none"
    return text + (f" and {len(dropping) - shown} more zones" if len(dropping) > shown else "")


async def _run_build(settings: BuildSettings, progress: TerminalProgress) -> dict[str, Any]:
    source = open_source(settings.source)
    try:
        return await build(settings, source, progress)
    finally:
        await source.close()


def _channels_file(source: str, given: str | None) -> Path | None:
    """Return the channels file a build checks prizes against: the one given, or a data folder's own."""
    if given:
        return Path(given)
    default = Path(source) / "channels.json"
    return default if "://" not in source and default.is_file() else None


def cmd_build(args: argparse.Namespace) -> int:
    settings = BuildSettings(
        source=args.source, out=Path(args.out), grid=_grid(args), skip_bad_rows=args.skip_bad_rows, keep=args.keep,
        memory_mb=args.memory_mb, workers=args.workers, channels=_channels_file(args.source, args.channels),
    )
    progress = TerminalProgress(sys.stderr, not args.quiet)
    try:
        manifest = asyncio.run(_run_build(settings, progress))
    finally:
        progress.close()
    if args.json:
        sys.stdout.write(orjson.dumps(manifest, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not args.quiet:
        print(summary(manifest, settings.out, time.monotonic() - progress.started))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    root = Path(args.snapshots)
    live = current_seq(root)
    seq = args.seq if args.seq is not None else live
    if seq is None:
        raise SnapshotError(f"{root}: no CURRENT snapshot and no --seq")
    snapshot = open_snapshot(root / str(seq), verify=True) if args.verify else None
    manifest = snapshot.manifest if snapshot else read_manifest(root / str(seq))
    report = {"current": live, "snapshots": list_seqs(root), "verified": bool(snapshot),
              "format_version": manifest["version"], "bytes_per_row": bytes_per_row(manifest), "manifest": manifest}
    sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    check_position(args.lat, args.lng)
    try:
        now_s = int(time.time()) if args.at is None else parse_time({"at": args.at}, "at")
    except FieldError as exc:
        raise LoaderError(f"--at: {exc.reason}") from None
    lookup = Lookup(open_current(Path(args.snapshots)))
    result = answer(lookup, lookup.table.status(now_s), args.lat, args.lng, args.max_pois)
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    if args.origin:
        seq = asyncio.run(_with_origin(args.origin, args.endpoint, lambda origin: rollback_origin(origin, args.to)))
        print(f"{args.origin} CURRENT -> {seq}")
        return 0
    seq = rollback(Path(args.snapshots), args.to)
    print(f"CURRENT -> {seq}")
    return 0


async def _with_origin(url: str, endpoint: str, work: Callable[[Origin], Awaitable[T]]) -> T:
    try:
        origin = open_origin(url, endpoint)
    except ValueError as exc:
        raise LoaderError(f"--to/--origin: {exc}") from None
    try:
        return await work(origin)
    except OriginError as exc:
        raise LoaderError(str(exc)) from None
    finally:
        await origin.close()


def cmd_publish(args: argparse.Namespace) -> int:
    root = Path(args.snapshots)
    seq = args.seq if args.seq is not None else current_seq(root)
    if seq is None:
        raise SnapshotError(f"{root}: no CURRENT snapshot and no --seq")
    started = time.monotonic()
    # Checked here first: an origin must never hold a copy that its hosts will refuse.
    manifest = open_snapshot(root / str(seq), verify=True).manifest
    asyncio.run(_with_origin(args.to, args.endpoint, lambda origin: publish(origin, root / str(seq), manifest)))
    size = sum(int(f["bytes"]) for f in manifest["files"].values())
    print(f"published snapshot {seq} to {args.to}: {size / 1e6:,.1f} MB in {time.monotonic() - started:.1f} s; "
          "its CURRENT now names it")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    progress = TerminalProgress(sys.stderr, not args.quiet)
    try:
        counts = write_synthetic(Path(args.out), args.pois, args.seed, progress)
    finally:
        progress.close()
    print(orjson.dumps(counts).decode())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    progress = TerminalProgress(sys.stderr, not args.quiet)
    try:
        counts = asyncio.run(import_folder(Path(args.source), args.mysql, args.batch, progress))
    finally:
        progress.close()
    print(orjson.dumps(counts).decode())
    return 0


def _add_grid_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grid", choices=("square", "h3"), default="square",
                   help="Cell shape: equal-area squares (default) or H3 hexagons.")
    p.add_argument("--cell-m", type=float, default=100.0,
                   help="Side of a square cell in metres, 10 to 10000 (default 100).")
    p.add_argument("--h3-res", type=int, default=10, help="H3 resolution with --grid h3, 0 to 15 (default 10).")
    p.add_argument("--radius", type=int, default=2,
                   help="Window radius in cells: 2 gives the 5x5 window of 25 cells (default 2).")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="geo-snapshot", description="Build and manage geodrop grid-cell snapshots.",
                                  epilog="Exit codes: 0 done; 1 a disk refused a write (nothing published); 2 bad input or a "
                                         "refused operation (one line per problem); 130 interrupted.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="Build a snapshot from a data folder or MySQL and publish it.",
                       description="Stream the source, validate every row, drop POIs in exclusion zones, check "
                       "POIs against their task's district, sort by grid cell and publish atomically. Bad rows fail "
                       "the build (exit 2) and nothing is published, unless --skip-bad-rows.")
    p.add_argument("--source", required=True,
                   help="A data folder (districts.geojson, pois.csv, tasks.csv, task_prizes.csv, optional "
                   "exclusions.geojson) or mysql://user:pass@host:port/db.")
    p.add_argument("--out", default=DEFAULT_SNAPSHOTS,
                   help="Snapshots folder: the new snapshot goes to OUT/<seq>/ and OUT/CURRENT points at it.")
    _add_grid_options(p)
    p.add_argument("--keep", type=int, default=5, help="How many newest snapshots to keep for rollback (default 5).")
    p.add_argument("--memory-mb", type=_positive_int, default=2048,
                   help="Working memory for the POI rows, in MiB (default 2048). A build with more rows sorts them in "
                        "runs of this size, spilled to a temp folder inside OUT (about 70 bytes of disk a row, beside "
                        "the snapshot's 32; checked before the first run is written), then merges them in one pass.")
    p.add_argument("--workers", type=_positive_int, default=default_workers(),
                   help="Threads that parse, screen and sort the POIs (default: one per core this process may use, "
                        f"{default_workers()} here). The snapshot is the same for any number.")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="Drop bad rows (reported in the summary and manifest) instead of failing the build.")
    p.add_argument("--channels", help="The delivery channels file (JSON; README: Delivery): every prize type must have a "
                   "channel in it, or the build fails naming the row; the snapshot then tells players each prize's ETA. "
                   "Default: channels.json in a data folder source, if there is one (else prizes are not checked).")
    p.add_argument("--json", action="store_true", help="Print the manifest as JSON instead of the summary.")
    p.add_argument("--quiet", action="store_true", help="No progress line and no summary.")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("inspect", help="Show a snapshot's manifest and the snapshots on hand, as JSON.")
    p.add_argument("--snapshots", default=DEFAULT_SNAPSHOTS, help="Snapshots folder (default ./snapshots).")
    p.add_argument("--seq", type=int, help="Which snapshot (default: the one CURRENT points at).")
    p.add_argument("--verify", action="store_true", help="Also check every file's checksum, shape and order.")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("query", help="Print, as JSON, what the service would return for a position.")
    p.add_argument("--snapshots", default=DEFAULT_SNAPSHOTS, help="Snapshots folder (default ./snapshots).")
    p.add_argument("--lat", type=float, required=True, help="Latitude in WGS84 degrees.")
    p.add_argument("--lng", type=float, required=True, help="Longitude in WGS84 degrees.")
    p.add_argument("--at", help="Time to judge task windows at: ISO-8601 with zone or epoch seconds (default now).")
    p.add_argument("--max-pois", type=int, default=500, help="Cap on POIs returned (default 500).")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("rollback", help="Point CURRENT back at an older snapshot, here or at an origin.",
                       description="Point a snapshots folder's CURRENT (verified first) or, with --origin, an origin's "
                       "CURRENT at an older complete snapshot; hosts pulling from the origin follow within a poll.")
    p.add_argument("--snapshots", default=DEFAULT_SNAPSHOTS, help="Snapshots folder (default ./snapshots).")
    p.add_argument("--origin", help="Roll back this origin instead: a folder or s3://bucket/prefix.")
    p.add_argument("--endpoint", default="", help="S3 endpoint URL for an s3:// origin (default AWS).")
    p.add_argument("--to", type=int, help="The seq to go back to (default: the newest one before CURRENT).")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("publish", help="Upload a built snapshot to an origin the serving hosts pull from.",
                       description="Verify a local snapshot, upload its data files, then its manifest, then move the "
                       "origin's CURRENT to it: a half-finished upload is never current. Credentials for s3:// come "
                       "from the AWS_* environment variables.")
    p.add_argument("--snapshots", default=DEFAULT_SNAPSHOTS, help="Snapshots folder holding the build (default ./snapshots).")
    p.add_argument("--to", required=True, help="The origin: a folder (served to the hosts by any static HTTP server) "
                   "or s3://bucket/prefix.")
    p.add_argument("--seq", type=int, help="Which snapshot (default: the one CURRENT points at).")
    p.add_argument("--endpoint", default="", help="S3 endpoint URL for an s3:// origin, e.g. http://127.0.0.1:9000 "
                   "(default AWS).")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("synth", help="Write a seeded synthetic data folder of any size (streams; 10^3 to 10^8 POIs).")
    p.add_argument("--out", required=True, help="Folder to write (created; existing files are replaced).")
    p.add_argument("--pois", type=int, required=True, help="How many POIs to generate.")
    p.add_argument("--seed", type=int, default=1, help="Random seed: the same seed gives the same files (default 1).")
    p.add_argument("--quiet", action="store_true", help="No progress line.")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("import", help="Load a data folder into MySQL tables (batched, idempotent: reruns replace).")
    p.add_argument("--source", required=True, help="The data folder to import.")
    p.add_argument("--mysql", required=True, help="Target database, mysql://user:pass@host:port/db.")
    p.add_argument("--batch", type=int, default=5000, help="Rows per INSERT statement (default 5000).")
    p.add_argument("--quiet", action="store_true", help="No progress line.")
    p.set_defaults(func=cmd_import)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; bad input of any kind exits 2 with a one-line-per-problem message, a disk that refuses
    a write (full, read-only) exits 1: the input was fine, the machine needs fixing."""
    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StorageError as exc:
        print(f"geo-snapshot {args.command}: {exc}", file=sys.stderr)
        return 1
    except (LoaderError, SnapshotError, GridError) as exc:
        print(f"geo-snapshot {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"geo-snapshot {args.command}: interrupted; nothing was published", file=sys.stderr)
        return 130
