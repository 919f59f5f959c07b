"""What every source of operator data gives: the Source protocol and its rows. Readers import this module,
never the package head, which opens them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from loaders.pois import PoiChunk

Kind = Literal["districts", "zones", "tasks", "prizes"]


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One row of a small table: where it came from, its fields, and its geometry if it has one."""

    source: str
    row: int
    fields: Mapping[str, Any]
    geometry: Any = None


class Source(Protocol):
    """A readable copy of the operator data (DESIGN.md section 1)."""

    @property
    def name(self) -> str:
        """Where the data comes from, safe to print (no password)."""
        ...

    async def rows(self, kind: Kind) -> list[SourceRow]:
        """Return all rows of a small table (districts, zones, tasks, prizes)."""
        ...

    def poi_chunks(self) -> AsyncIterator[PoiChunk]:
        """Stream the POIs in chunks, never the whole table at once."""
        ...

    async def poi_count_hint(self) -> int | None:
        """Roughly how many POIs there are, cheaply (for the free-disk check of a build that spills)."""
        ...

    async def close(self) -> None: ...
