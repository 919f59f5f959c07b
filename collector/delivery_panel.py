"""The dashboard's deliveries panel: per channel the backlog, the age of the oldest pending, the rate now against
the configured one, the counts by state and the dead letters."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from delivery.channels import Channel
from geo_service.ledger import PlanRunner
from geo_service.ledger.deliveries import DeliveryStore

FRESH_S = 1.0  # many open dashboards read the record database once a second between them


class DeliveryPanel:
    def __init__(self, channels: tuple[Channel, ...], runner: PlanRunner) -> None:
        self.channels = channels
        self.runner = runner
        self.store = DeliveryStore(runner)
        self._sent: dict[str, tuple[float, int]] = {}  # channel -> (when, its sent counter then): the rate now
        self._answer: tuple[float, dict[str, Any]] | None = None
        self._reading = asyncio.Lock()

    async def read(self) -> dict[str, Any]:
        """Return every channel's figures, read at most once in FRESH_S."""
        async with self._reading:
            if self._answer is None or time.monotonic() - self._answer[0] >= FRESH_S:
                self._answer = (time.monotonic(), await self._read())
            return self._answer[1]

    async def _read(self) -> dict[str, Any]:
        shared = await self.store.channel_state([c.name for c in self.channels])
        now = time.monotonic()
        panel = []
        for c in self.channels:
            row = shared.get(c.name, {"rate_milli": None, "paused": False, "pace_milli": -1, "hold_until": 0.0, "sent": 0})
            rate = c.rate_milli if row["rate_milli"] is None else int(row["rate_milli"])
            then = self._sent.get(c.name)
            self._sent[c.name] = (now, row["sent"])
            rate_now = None if then is None or now <= then[0] else max(0.0, (row["sent"] - then[1]) / (now - then[0]))
            stats = await self.store.stats(c.prizes)
            panel.append({"name": c.name, "class": c.kind, "prizes": list(c.prizes), "eta": c.eta,
                          "rate_per_s": rate / 1000, "configured_rate_per_s": c.rate_per_s,
                          "pace_per_s": (rate if row["pace_milli"] < 0 else min(rate, row["pace_milli"])) / 1000,
                          "rate_now_per_s": None if rate_now is None else round(rate_now, 1),
                          "paused": row["paused"], "held_s": max(0.0, round(row["hold_until"] - time.time(), 1)),
                          "sent": row["sent"], **stats})
        return {"channels": panel}
