"""The collector client: polls task status, hands it to the snapshot holder, and tracks its age.

If the collector is unreachable the service keeps serving the last view it had and reports how
old it is; it never stops serving for want of status.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp
import orjson

from geo_service.nearby import TaskOverride
from geo_service.nearby.live import SnapshotHolder

log = logging.getLogger("geodrop.status")


def parse_status(raw: bytes) -> dict[int, TaskOverride]:
    """Decode the collector's columnar /v1/tasks/status body into overrides by task id."""
    body = orjson.loads(raw)
    prize_types, cols = body["prize_types"], body["tasks"]
    return {
        int(task_id): TaskOverride(bool(enabled), {p: r for p, r in zip(prize_types, row) if r >= 0})
        for task_id, enabled, row in zip(cols["task_id"], cols["enabled"], cols["remaining"])
    }


@dataclass(slots=True)
class StatusPoller:
    url: str  # the collector's base URL
    holder: SnapshotHolder
    interval_s: float
    etag: str | None = None
    fetched_at: float | None = None  # wall time of the last answer (200 or 304) from the collector
    failures: int = 0
    last_error: str | None = None
    failing: int = 0  # failed polls since the last answer: an outage is logged when it starts and when it ends

    def age_s(self) -> float | None:
        """Return how old the status in use is (None before the first answer)."""
        return None if self.fetched_at is None else round(time.time() - self.fetched_at, 3)

    async def poll(self, session: aiohttp.ClientSession) -> None:
        """Fetch once; apply a changed view; on any failure keep the last one."""
        headers = {"If-None-Match": self.etag} if self.etag else {}
        try:
            async with session.get(f"{self.url}/v1/tasks/status", headers=headers) as resp:
                if resp.status == 200:
                    # 10^5 tasks take a while to decode: off the event loop, like the status recompute.
                    overrides = await asyncio.to_thread(parse_status, await resp.read())
                    await self.holder.apply_overrides(overrides, int(time.time()))
                    self.etag = resp.headers.get("ETag")
                elif resp.status != 304:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
        except (TimeoutError, aiohttp.ClientError, orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            self.failures += 1
            self.failing += 1
            self.last_error = str(exc) or type(exc).__name__
            if self.failing == 1:
                log.warning("collector unreachable; keeping the last status", extra={"error": self.last_error,
                                                                                     "age_s": self.age_s()})
            return
        if self.failing:
            log.info("collector reachable again", extra={"failed_polls": self.failing})
        self.fetched_at = time.time()
        self.last_error, self.failing = None, 0

    async def run(self) -> None:
        """Poll until cancelled."""
        timeout = aiohttp.ClientTimeout(total=max(self.interval_s * 2, 2.0))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                await self.poll(session)
                await asyncio.sleep(self.interval_s)
