"""A dispatcher: leases due deliveries of each channel, calls the partner, records how each call ended.

Each channel runs its own loop, HTTP connection pool and in-flight budget; fast and slow channels also use
separate record-database connections, so a slow partner that hangs every call never holds up cash. Once in
each 100 ms slice a channel's loop leases what the channel's shared pace leaves of the slice (deliveries.py:
the rate holds across every dispatcher of the channel) and sends it at once; answers are recorded in batches.
A dispatcher killed anywhere loses nothing: its leases end, and another sends the same delivery_id again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field

import aiohttp

from delivery.channels import Channel
from delivery.contract import MAX_ANSWER_BYTES, SIGNATURE_HEADER, Answer, backoff_s, classify, payload, sign
from geo_service.ledger.deliveries import Delivery, DeliveryStore, Result
from geo_service.ledger.interface import LedgerError
from geo_service.ledger.rates import SLICE_S, slice_of

log = logging.getLogger("geodrop.delivery")
FLUSH_EVERY_S = 0.02  # answers are recorded in one transaction this often (a delivered prize shows within it)
LEASE_MARGIN_S = 5.0  # a lease outlives its call's timeout by this much
# A slice's deliveries are leased this long before it begins (calls of the slice before are mostly answered by then,
# and the database has time to answer) and sent as it begins; a lease back more than 30 ms into its slice is given
# back. The slice's calls then reach the partner well inside it, whatever the database's latency.
LEASE_AHEAD_S = 0.04
SEND_WINDOW_S = 0.03
SEND_DEADLINE_S = 0.07  # and a call of it not started 70 ms into the slice is given back
MAX_UNRECORDED = 10_000  # answers waiting for the record database beyond which no more are leased
UNREACHABLE_AFTER = 3  # answers failing one by one in a row that mean the database is down, not one answer bad
FAILURE_LOG_EVERY_S = 10.0


async def _until(stop: asyncio.Event, moment: float) -> bool:
    """Wait until the epoch time `moment` or `stop`, whichever comes first; return whether `stop` came. The wait runs
    on the monotonic clock: if the wall clock stepped back meanwhile, it waits again for what is left."""
    while not stop.is_set() and (left := moment - time.time()) > 0:  # bounded: each round waits out what is left
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), left)
    return stop.is_set()


def owner_id() -> str:
    """Return this dispatcher's name on its leases: host, process and a random part (a restarted process is new)."""
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{random.randrange(16**6):06x}"


@dataclass(slots=True)
class ChannelHealth:
    counts: Counter[str] = field(default_factory=Counter)  # sent, delivered, retried, parked, failed, slowed, late
    pace_milli: int = 0
    rate_milli: int = 0
    paused: bool = False
    failures: int = 0  # record-database calls that failed
    last_error: str | None = None
    last_lease_at: float = 0.0


async def read_answer(response: aiohttp.ClientResponse) -> bytes | None:
    """Return the answer's body, or None if it is larger than MAX_ANSWER_BYTES (never read past that)."""
    if (response.content_length or 0) > MAX_ANSWER_BYTES:
        return None
    body = bytearray()
    async for chunk in response.content.iter_chunked(16_384):
        body += chunk
        if len(body) > MAX_ANSWER_BYTES:
            return None
    return bytes(body)


class ChannelRunner:
    def __init__(self, channel: Channel, store: DeliveryStore, secret: str, owner: str,
                 rng: random.Random | None = None) -> None:
        self.channel = channel
        self.store = store
        self._secret = secret
        self.owner = owner
        self.rng = rng or random.Random()
        self.health = ChannelHealth(rate_milli=channel.rate_milli, pace_milli=channel.rate_milli)
        self._answers: list[Result] = []
        self._calls: set[asyncio.Task[None]] = set()
        self._slowed_slice = 0
        self._recording = 0  # answers being written now
        self._last_failure_log = 0.0

    @property
    def in_flight(self) -> int:
        """Calls open now."""
        return len(self._calls)

    @property
    def unrecorded(self) -> int:
        """Answers not yet written to the record database, the batch being written included."""
        return len(self._answers) + self._recording

    async def run(self, stop: asyncio.Event) -> None:
        """Lease and send once a slice until `stop` is set; then let the calls in flight end and record them."""
        c = self.channel
        connector = aiohttp.TCPConnector(limit=c.max_in_flight, ttl_dns_cache=300)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=c.timeout_s),
                                         auto_decompress=False, raise_for_status=False) as session:
            recorder = asyncio.create_task(self._record_loop(stop), name=f"record-{c.name}")
            while not stop.is_set():
                target = slice_of(time.time()) + 1
                if not await _until(stop, target * SLICE_S - LEASE_AHEAD_S):
                    try:
                        await self._lease_and_send(session, target, stop)
                    except Exception as exc:  # noqa: BLE001 - one bad round must not stop the channel for good
                        log.exception("lease round failed", extra={"channel": c.name})
                        self._failed(exc)
            if self._calls:
                await asyncio.wait(self._calls, timeout=c.timeout_s + 1)
            for task in list(self._calls):  # bounded: a call past its own timeout is abandoned (its lease ends)
                task.cancel()
            await recorder

    async def _lease_and_send(self, session: aiohttp.ClientSession, target: int, stop: asyncio.Event) -> None:
        """Lease for the slice `target` ahead of it, then send at its start: the database's time is off the clock."""
        c, h = self.channel, self.health
        # While answers cannot be written, take no more: the leases of those waiting end, and they are sent again.
        want = c.max_in_flight - self.in_flight if self.unrecorded < MAX_UNRECORDED else 0
        try:
            lease = await self.store.lease(c.name, c.prizes, c.rate_milli, want, self.owner, c.timeout_s + LEASE_MARGIN_S,
                                           target)
        except LedgerError as exc:
            self._failed(exc)
            return
        h.pace_milli, h.rate_milli, h.paused, h.last_lease_at = lease.pace_milli, lease.rate_milli, lease.paused, time.time()
        # Sent as the slice begins, all at once; a lease that came back too late for that (a database stall) or a stop
        # before the slice began gives its deliveries back, recorded as the dispatcher goes on or stops.
        stopped = await _until(stop, lease.slice * SLICE_S)
        if lease.deliveries and (stopped or time.time() > lease.slice * SLICE_S + SEND_WINDOW_S):
            self._give_back(lease.deliveries, "not sent: its 100 ms slice had begun")
            return
        deadline = lease.slice * SLICE_S + SEND_DEADLINE_S
        for d in lease.deliveries:
            task = asyncio.create_task(self._send(session, d, deadline))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)
        h.counts["sent"] += len(lease.deliveries)

    async def _send(self, session: aiohttp.ClientSession, d: Delivery, deadline: float) -> None:
        c = self.channel
        if time.time() > deadline:
            # A lease larger than the loop can start in its slice: the rest would land among the next slice's calls.
            self._give_back([d], "not sent: its 100 ms slice was nearly over")
            return
        body = payload(d.claim_id, d.user_id, d.task_id, d.prize_type, d.won_at, c.name, d.attempt)
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self._secret, int(time.time()), body),
                   "Idempotency-Key": d.claim_id}
        try:
            async with session.post(c.url, data=body, headers=headers, allow_redirects=False) as response:
                answer = classify(response.status, await read_answer(response), response.headers.get("Retry-After"))
        except TimeoutError:
            answer = Answer("slow", f"no answer within {c.timeout_s:g} s")
        except Exception as exc:  # noqa: BLE001 - whatever went wrong, the delivery is answered (sent again later)
            answer = Answer("retry", f"{type(exc).__name__}: {exc}"[:200])
        self._answered(d, answer)

    def _give_back(self, deliveries: Sequence[Delivery], why: str) -> None:
        self.health.counts["late"] += len(deliveries)
        self._answers += [Result(d.claim_id, "retry", self.owner, d.attempt, why, time.time()) for d in deliveries]

    def _answered(self, d: Delivery, answer: Answer) -> None:
        h = self.health
        now = time.time()
        if answer.kind in ("delivered", "parked", "failed"):
            h.counts[answer.kind] += 1
            self._answers.append(Result(d.claim_id, answer.kind, self.owner, d.attempt, answer.detail))
            if answer.kind == "failed":
                log.warning("delivery failed: to the dead-letter list", extra={
                    "channel": self.channel.name, "claim_id": d.claim_id, "error": answer.detail})
            return
        wait = answer.retry_after_s if answer.retry_after_s is not None else backoff_s(d.attempt, self.rng)
        h.counts["retried"] += 1
        self._answers.append(Result(d.claim_id, "retry", self.owner, d.attempt, answer.detail, now + wait))
        if answer.kind == "slow" and slice_of(now) != self._slowed_slice:
            self._slowed_slice = slice_of(now)
            h.counts["slowed"] += 1
            task = asyncio.create_task(self._slow(answer.retry_after_s or 0.0))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _slow(self, hold_s: float) -> None:
        try:
            self.health.pace_milli = await self.store.slow(self.channel.name, self.channel.rate_milli, hold_s)
        except LedgerError as exc:
            self._failed(exc)

    async def _record_loop(self, stop: asyncio.Event) -> None:
        """Record answers every FLUSH_EVERY_S; after `stop`, until the last call in flight has been recorded."""
        while True:
            if not stop.is_set():
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), FLUSH_EVERY_S)
            elif self._calls or self._answers:
                await asyncio.sleep(FLUSH_EVERY_S)
            else:
                return
            if self._answers:
                batch, self._answers = self._answers, []
                self._recording = len(batch)
                recorded = await self._record(batch)
                self._recording = 0
                if not recorded:
                    self._answers[:0] = batch  # kept, in order, for the next round
                    if stop.is_set() and not self._calls:
                        return  # shutting down with the database gone: the leases end and others resend
                    await asyncio.sleep(0.5)

    async def _record(self, batch: list[Result]) -> bool:
        """Write a batch of answers; False (keep them all) if the database answers none. If it refuses the batch but
        takes answers one by one, the ones it refuses alone are dropped and logged (their leases end and they are
        sent again), so one bad answer never holds back the rest."""
        try:
            await self.store.settle(batch)
            return True
        except Exception as exc:  # noqa: BLE001 - whatever the database says, the batch is kept or split
            self._failed(exc)
        if len(batch) == 1:
            return False
        refused: list[tuple[Result, str]] = []
        in_a_row = 0
        for i, result in enumerate(batch):
            try:
                await self.store.settle([result])
                in_a_row = 0
            except Exception as exc:  # noqa: BLE001
                refused.append((result, str(exc)))
                in_a_row += 1
                if in_a_row == UNREACHABLE_AFTER:  # the database went away: keep these and the untried rest
                    self._answers[:0] = [r for r, _ in refused[-in_a_row:]] + batch[i + 1 :]
                    refused = refused[:-in_a_row]
                    break
        for result, error in refused:
            log.error("an answer could not be recorded; its delivery is sent again when its lease ends",
                      extra={"channel": self.channel.name, "claim_id": result.claim_id, "error": error[:300]})
        return True

    def _failed(self, exc: Exception) -> None:
        h = self.health
        h.failures += 1
        h.last_error = str(exc)[:300]
        if time.monotonic() - self._last_failure_log >= FAILURE_LOG_EVERY_S:
            self._last_failure_log = time.monotonic()
            log.warning("record database call failed; trying again", extra={"channel": self.channel.name,
                                                                            "error": h.last_error})
