"""Load tracking: requests in flight and event-loop lag drive the client poll interval and shedding."""

from __future__ import annotations

import asyncio
import math
import resource
from dataclasses import dataclass
from typing import Protocol

_PROBE_S = 0.05
_NR_OPEN = 1 << 20
_EWMA = 0.3  # weight of the newest lag sample: reacts within a few probes, ignores one hiccup


class LoadLimits(Protocol):
    """The thresholds a LoadMonitor reads (a service's settings hold them)."""

    @property
    def next_poll_ms(self) -> int: ...
    @property
    def max_next_poll_ms(self) -> int: ...
    @property
    def busy_inflight(self) -> int: ...
    @property
    def shed_inflight(self) -> int: ...
    @property
    def busy_lag_ms(self) -> float: ...
    @property
    def shed_lag_ms(self) -> float: ...


@dataclass(slots=True)
class LoadMonitor:
    settings: LoadLimits
    inflight: int = 0
    lag_ms: float = 0.0
    shed: int = 0

    def pressure(self) -> float:
        """Return load relative to the 'busy' thresholds: at most 1 means idle enough."""
        s = self.settings
        return max(self.inflight / s.busy_inflight, self.lag_ms / s.busy_lag_ms)

    def next_poll_ms(self) -> int:
        """Return the poll interval to tell clients: the base when idle, stretched with pressure."""
        s = self.settings
        return int(min(s.max_next_poll_ms, s.next_poll_ms * max(1.0, self.pressure())))

    def overloaded(self) -> bool:
        s = self.settings
        return self.inflight > s.shed_inflight or self.lag_ms > s.shed_lag_ms

    def retry_after_s(self) -> int:
        return max(1, math.ceil(self.next_poll_ms() / 1000))

    async def probe_lag(self) -> None:
        """Measure how late the loop wakes a sleeper, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(_PROBE_S)
            late_ms = max(0.0, (loop.time() - started - _PROBE_S) * 1000)
            self.lag_ms = (1 - _EWMA) * self.lag_ms + _EWMA * late_ms


def raise_open_files_limit() -> int:
    """Lift this process's soft limit on open files to its hard limit and return it: every connection is a
    file, and the usual soft limit of 1024 would refuse connections long before memory or CPU run out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit cannot be a soft one: the kernel caps open files at fs.nr_open (2^20 by default).
    target = _NR_OPEN if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # fs.nr_open is set lower: the soft limit stays where it was
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
