"""The dashboard stream: district totals pushed to server-sent-event subscribers when they change."""

from __future__ import annotations

import asyncio
from typing import Any

_QUEUE = 256  # events a slow subscriber may lag behind before it is dropped


class Feed:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._open = 0  # streams whose handler still runs: a dropped subscriber counts until its handler ends
        self.dropped = 0  # subscribers closed for falling behind
        self.refused = 0  # streams refused at the cap (handlers.stream)

    def subscribe(self) -> asyncio.Queue[dict[str, Any] | None]:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(_QUEUE)
        self._queues.add(queue)
        self._open += 1
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        """End a subscription; every subscribe() is paired with one (the stream handler's finally)."""
        self._queues.discard(queue)
        self._open -= 1

    def publish(self, changed: list[dict[str, Any]]) -> None:
        """Queue each changed district for every subscriber; a subscriber that cannot keep up is closed."""
        for queue in list(self._queues):
            try:
                for district in changed:
                    queue.put_nowait(district)
            except asyncio.QueueFull:
                self.dropped += 1
                self._queues.discard(queue)
                queue._queue.clear()  # type: ignore[attr-defined]  # make room for the close marker
                queue.put_nowait(None)

    def close(self) -> None:
        """End every stream (called on shutdown, before aiohttp waits for handlers)."""
        for queue in list(self._queues):
            queue._queue.clear()  # type: ignore[attr-defined]
            queue.put_nowait(None)
        self._queues.clear()

    @property
    def subscribers(self) -> int:
        """Open streams, a slow one that publish() let go included: its socket is held until its handler ends."""
        return self._open
