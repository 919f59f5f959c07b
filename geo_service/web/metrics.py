"""Prometheus text-format metrics for one worker process."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(slots=True)
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS_S) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS_S, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class Metrics:
    requests: defaultdict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    latency: defaultdict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests[(route, status)] += 1
        self.latency[route].observe(seconds)

    def render(self, labels: dict[str, str], values: dict[str, tuple[str, str, float]]) -> str:
        """Return the text exposition; `values` maps a metric name to (type, help, value)."""
        base = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines = ["# HELP geodrop_http_requests_total Requests by route and status.",
                 "# TYPE geodrop_http_requests_total counter"]
        lines += [f'geodrop_http_requests_total{{{base},route="{r}",status="{s}"}} {n}'
                  for (r, s), n in sorted(self.requests.items())]
        lines += ["# HELP geodrop_http_request_seconds Request latency by route.",
                  "# TYPE geodrop_http_request_seconds histogram"]
        for route, hist in sorted(self.latency.items()):
            lines += _histogram_lines(base, route, hist)
        for name, (kind, help_text, value) in values.items():
            lines += [f"# HELP geodrop_{name} {help_text}", f"# TYPE geodrop_{name} {kind}",
                      f"geodrop_{name}{{{base}}} {value:g}"]
        return "\n".join(lines) + "\n"


def _histogram_lines(base: str, route: str, hist: Histogram) -> list[str]:
    tag = f'{base},route="{route}"'
    lines, running = [], 0
    for bound, n in zip([*map(str, BUCKETS_S), "+Inf"], hist.counts):
        running += n
        lines.append(f'geodrop_http_request_seconds_bucket{{{tag},le="{bound}"}} {running}')
    lines.append(f"geodrop_http_request_seconds_sum{{{tag}}} {hist.total:.6f}")
    lines.append(f"geodrop_http_request_seconds_count{{{tag}}} {running}")
    return lines
