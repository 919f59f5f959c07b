"""The data-folder source: districts.geojson, exclusions.geojson and CSVs, POIs streamed with pyarrow."""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from loaders.errors import SourceError
from loaders.pois import POI_FIELDS, PoiChunk
from loaders.sources.interface import Kind, SourceRow

FILES: dict[Kind, str] = {
    "districts": "districts.geojson",
    "zones": "exclusions.geojson",
    "tasks": "tasks.csv",
    "prizes": "task_prizes.csv",
}
OPTIONAL: frozenset[Kind] = frozenset({"zones"})
POIS_FILE = "pois.csv"
# Arrow parses a block at a time and reads a few dozen blocks ahead, outside the build's --memory-mb: 4 MiB blocks
# (~120k POI rows) hold ~140 MB before the first batch, 16 MiB blocks held 325 MB (of a 334 MB file), at the same speed.
_BLOCK_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class FolderSource:
    folder: Path

    @classmethod
    def at(cls, spec: str) -> FolderSource:
        folder = Path(spec)
        if not folder.is_dir():
            raise SourceError(f"{folder}: not a data folder")
        return cls(folder)

    @property
    def name(self) -> str:
        return str(self.folder)

    async def rows(self, kind: Kind) -> list[SourceRow]:
        path = self.folder / FILES[kind]
        if not path.is_file():
            if kind in OPTIONAL:
                return []
            raise SourceError(f"{path}: missing")
        return _read_geojson(path) if path.suffix == ".geojson" else _read_csv(path)

    async def poi_chunks(self) -> AsyncIterator[PoiChunk]:
        path = self.folder / POIS_FILE
        try:
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=_BLOCK_BYTES),
                convert_options=pacsv.ConvertOptions(
                    include_columns=list(POI_FIELDS),
                    column_types={f: pa.string() for f in POI_FIELDS},
                    strings_can_be_null=True,
                    null_values=[""],  # not arrow's default list, which would turn "nan" into a silent null
                ),
            )
        except FileNotFoundError:
            raise SourceError(f"{path}: missing") from None
        except (pa.ArrowInvalid, pa.ArrowKeyError) as exc:
            raise SourceError(f"{path}: {exc}") from None
        row = 2  # line 1 is the header
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as exc:
                raise SourceError(f"{path}: near line {row}: {exc}") from None
            yield PoiChunk(str(path), row, {f: batch.column(f) for f in POI_FIELDS})
            row += batch.num_rows

    async def poi_count_hint(self) -> int | None:
        path = self.folder / POIS_FILE
        try:
            with path.open("rb") as f:
                head = f.read(1 << 20)
            size = path.stat().st_size
        except OSError:
            return None
        lines = head.count(b"\n")
        return int(size / (len(head) / lines)) if lines else None  # the file's size at its first MiB's line length

    async def close(self) -> None:
        return None


def _read_csv(path: Path) -> list[SourceRow]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return [SourceRow(str(path), reader.line_num, row) for row in reader]


def _read_geojson(path: Path) -> list[SourceRow]:
    try:
        doc = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise SourceError(f"{path}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        raise SourceError(f"{path}: not a GeoJSON FeatureCollection")
    rows = []
    for i, feature in enumerate(doc["features"], start=1):
        feature = feature if isinstance(feature, dict) else {}
        props = feature.get("properties")
        rows.append(SourceRow(str(path), i, props if isinstance(props, dict) else {}, feature.get("geometry")))
    return rows
