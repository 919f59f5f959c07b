"""A rehearsal of the event on the sample: phones walking and standing, polling /v1/nearby as the contract
says (honouring next_poll_ms, sending If-None-Match), and claiming POIs they pass, with the collector running.

    .venv/bin/python bench/rehearsal.py [--phones 300] [--seconds 30] [--claims-per-s 15] [--json bench/out/rehearsal.json]

Builds the sample into a temp folder and runs `make run`'s pair (geo-service, 2 workers, and geo-collector
over one SQLite ledger) on loopback ports. Half the phones walk at 1.5 m/s in a straight line from a
random sample POI, half stand at one. Every phone polls once before the clock starts, as a phone already
in the event would, then polls again each next_poll_ms (X-Next-Poll-Ms on a 304), up to Retry-After on a
503. Claims: --claims-per-s times a second a phone with an unclaimed POI within 40 m of it in its latest
answer claims the nearest (each phone claims a POI once). Printed: polls a second, the share of 304s among
walkers' and standers' polls, poll p50 and p99, claims by outcome, and 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import free_port, wait_ready  # noqa: E402

from geo_service.snapshot.grid import M_PER_DEG, distance_m  # noqa: E402
from geo_service.tokens import mint  # noqa: E402

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]
SECRET = "rehearsal-secret"
WALK_M_PER_S = 1.5
CLAIM_WITHIN_M = 40.0


@dataclass
class Phone:
    """One player's phone: where it is, how it moves, what it last saw."""

    user: str
    token: str
    lat: float
    lng: float
    heading: float | None  # radians from north; None: standing
    etag: str = ""
    nearby: list[dict[str, Any]] = field(default_factory=list)  # the latest answer's POIs
    claimed: set[int] = field(default_factory=set)
    moved_at: float = field(default_factory=time.monotonic)

    def move(self) -> None:
        now = time.monotonic()
        if self.heading is not None:
            step = WALK_M_PER_S * (now - self.moved_at)
            self.lat += step * math.cos(self.heading) / M_PER_DEG
            self.lng += step * math.sin(self.heading) / (M_PER_DEG * math.cos(math.radians(self.lat)))
        self.moved_at = now

    def claimable(self) -> dict[str, Any] | None:
        """The nearest POI of the latest answer within CLAIM_WITHIN_M that this phone has not claimed."""
        near = [(distance_m(self.lat, self.lng, p["lat"], p["lng"]), p) for p in self.nearby if p["poi_id"] not in self.claimed]
        near = [(d, p) for d, p in near if d <= CLAIM_WITHIN_M]
        return min(near, key=lambda x: x[0])[1] if near else None


@dataclass
class Tally:
    polls: Counter[tuple[str, int]] = field(default_factory=Counter)  # (walker|stander, status)
    latencies_ms: list[float] = field(default_factory=list)
    claims: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


async def poll(session: aiohttp.ClientSession, base: str, phone: Phone, tally: Tally | None) -> float:
    """One poll; return the seconds until the next one."""
    phone.move()
    headers = {"If-None-Match": phone.etag} if phone.etag else {}
    started = time.perf_counter()
    try:
        async with session.get(f"{base}/v1/nearby", params={"lat": f"{phone.lat:.6f}", "lng": f"{phone.lng:.6f}"},
                               headers=headers) as resp:
            body = await resp.read()
            status, etag = resp.status, resp.headers.get("ETag", "")
            next_ms = resp.headers.get("X-Next-Poll-Ms")
            retry_after = resp.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        if tally is not None:
            tally.errors[type(exc).__name__] += 1
        return 1.0
    if tally is not None:
        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
        tally.polls["walker" if phone.heading is not None else "stander", status] += 1
    if status == 200:
        answer = json.loads(body)
        phone.etag, phone.nearby = etag, answer["pois"]
        return float(answer["next_poll_ms"]) / 1000
    if status == 304:
        return float(next_ms or 5000) / 1000
    return float(retry_after or 1)


async def phone_loop(session: aiohttp.ClientSession, base: str, phone: Phone, tally: Tally, until: float) -> None:
    wait = random.uniform(0, 5)  # phones are not in step
    while time.monotonic() + wait < until:  # bounded by the rehearsal's end
        await asyncio.sleep(wait)
        wait = await poll(session, base, phone, tally)


async def claim(session: aiohttp.ClientSession, base: str, phone: Phone, poi: dict[str, Any], tally: Tally) -> None:
    body = {"claim_id": f"{phone.user}-{poi['poi_id']}", "task_id": poi["task_id"], "poi_id": poi["poi_id"],
            "lat": phone.lat, "lng": phone.lng}
    try:
        async with session.post(f"{base}/v1/claims", json=body, headers={"Authorization": f"Bearer {phone.token}"}) as resp:
            answer = await resp.json()
            tally.claims[answer.get("outcome") or f"{resp.status} {answer['error']['code']}"] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        tally.errors[type(exc).__name__] += 1


async def claimer(session: aiohttp.ClientSession, base: str, phones: list[Phone], per_s: float, tally: Tally,
                  until: float) -> None:
    """Land about per_s claims a second, each by a phone that has an unclaimed POI within reach."""
    started, sent = time.monotonic(), []
    for i in range(int((until - started) * per_s)):  # bounded: one claim per slot of the schedule
        await asyncio.sleep(max(0.0, started + i / per_s - time.monotonic()))
        ready = [(p, poi) for p in phones if (poi := p.claimable()) is not None]
        if not ready:
            tally.claims["no_phone_in_reach"] += 1
            continue
        phone, poi = random.choice(ready)
        phone.claimed.add(poi["poi_id"])
        sent.append(asyncio.create_task(claim(session, base, phone, poi, tally)))
    await asyncio.gather(*sent)


def sample_pois() -> list[tuple[float, float]]:
    lines = (REPO / "data" / "sample" / "pois.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [(float(f[2]), float(f[3])) for f in (line.split(",") for line in lines)]


async def rehearse(base: str, n_phones: int, seconds: float, claims_per_s: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    random.seed(seed)
    pois = sample_pois()
    expires = int(time.time()) + 3600
    phones = []
    for i in range(n_phones):
        lat, lng = rng.choice(pois)
        heading = rng.uniform(0, 2 * math.pi) if i % 2 == 0 else None
        phones.append(Phone(f"phone{i}", mint(f"phone{i}", SECRET, expires), lat, lng, heading))
    connector = aiohttp.TCPConnector(limit=n_phones)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(poll(session, base, p, None) for p in phones))  # phones already in the event
        tally = Tally()
        started = time.monotonic()
        until = started + seconds
        await asyncio.gather(claimer(session, base, phones, claims_per_s, tally, until),
                             *(phone_loop(session, base, p, tally, until) for p in phones))
        elapsed = time.monotonic() - started

    def share_304(kind: str) -> float:
        total = sum(n for (k, _), n in tally.polls.items() if k == kind)
        return tally.polls[kind, 304] / total if total else float("nan")

    polls = sum(tally.polls.values())
    cuts = statistics.quantiles(tally.latencies_ms, n=100) if len(tally.latencies_ms) > 1 else [float("nan")] * 99
    return {
        "phones": n_phones, "seconds": round(elapsed, 1), "polls_per_s": round(polls / elapsed, 1),
        "walkers_304": round(share_304("walker"), 4), "standers_304": round(share_304("stander"), 4),
        "poll_p50_ms": round(cuts[49], 2), "poll_p99_ms": round(cuts[98], 2),
        "claims_per_s": round(sum(n for k, n in tally.claims.items() if k != "no_phone_in_reach") / elapsed, 1),
        "claims": dict(tally.claims), "statuses": {f"{k} {s}": n for (k, s), n in sorted(tally.polls.items())},
        "5xx": sum(n for (_, s), n in tally.polls.items() if s >= 500), "client_errors": dict(tally.errors),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="geodrop-rehearsal-") as tmp_dir:
        tmp = Path(tmp_dir)
        snaps, ledger = tmp / "snaps", f"sqlite:///{tmp / 'ledger.sqlite3'}"
        subprocess.run([PY, "-m", "loaders", "build", "--source", str(REPO / "data" / "sample"), "--out", str(snaps)],
                       check=True, capture_output=True)
        service_port, collector_port = free_port(), free_port()
        collector = subprocess.Popen([PY, "-m", "collector", "run", "--snapshots", str(snaps), "--ledger", ledger,
                                      "--port", str(collector_port), "--data-dir", str(tmp / "cvar")])
        service = subprocess.Popen([PY, "-m", "geo_service", "serve", "--snapshots", str(snaps), "--workers", "2",
                                    "--port", str(service_port), "--data-dir", str(tmp / "var"), "--ledger", ledger,
                                    "--token-secret", SECRET, "--collector", f"http://127.0.0.1:{collector_port}"])
        try:
            wait_ready(f"http://127.0.0.1:{collector_port}/healthz")
            wait_ready(f"http://127.0.0.1:{service_port}/healthz")
            return asyncio.run(rehearse(f"http://127.0.0.1:{service_port}", args.phones, args.seconds,
                                        args.claims_per_s, args.seed))
        finally:
            for proc in (service, collector):
                proc.terminate()
                proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phones", type=int, default=300, help="phones, half walking and half standing (300)")
    parser.add_argument("--seconds", type=float, default=30.0, help="how long the measured part runs (30)")
    parser.add_argument("--claims-per-s", type=float, default=15.0, help="claims landed a second in all (15)")
    parser.add_argument("--seed", type=int, default=1, help="where the phones start and which way they walk (1)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures = run(args)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
