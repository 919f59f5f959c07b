"""The collector's client of geo-service: the dashboard's probe and health strip ask it, by its public routes."""

from __future__ import annotations

from typing import Any

import aiohttp

from geo_service.web.errors import ApiError, NotFound


class ServiceUnavailable(ApiError):
    status, code = 503, "service_unavailable"


class ServiceClient:
    """GETs JSON from the service at `base` (empty: the collector is not told where the service is)."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def get(self, path: str) -> Any:
        """Return the JSON body of GET base+path, whatever its status; raise NotFound or ServiceUnavailable."""
        if not self.base:
            raise NotFound("the collector is not told the service's URL (setting `service`)")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3))
        try:
            async with self._session.get(f"{self.base}{path}") as resp:
                return await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ServiceUnavailable(f"the service at {self.base} did not answer: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
