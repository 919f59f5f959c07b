"""The loader's errors: each names the source, the row and the field at fault."""

from __future__ import annotations

from dataclasses import dataclass


class LoaderError(Exception):
    """Base of every error the snapshot CLI reports as exit code 2."""


@dataclass(frozen=True, slots=True)
class RowError:
    """One bad row: where it is, which field, and why."""

    source: str
    row: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.row}: {self.field}: {self.reason}"


class SourceError(LoaderError):
    """A source that cannot be read at all (missing file, unreachable or malformed database)."""


class BadRowsError(LoaderError):
    """The source holds bad rows and skipping them was not allowed."""

    def __init__(self, errors: list[RowError], total: int) -> None:
        self.errors = errors
        self.total = total
        shown = "\n".join(str(e) for e in errors)
        more = f"\n... and {total - len(errors)} more" if total > len(errors) else ""
        super().__init__(f"{total} bad row(s); nothing was published (--skip-bad-rows drops them)\n{shown}{more}")


class ErrorLog:
    """Collects bad rows: keeps the first `limit` for the report and counts them all."""

    def __init__(self, limit: int = 50) -> None:
        self.limit = limit
        self.shown: list[RowError] = []
        self.count = 0

    @property
    def room(self) -> int:
        return self.limit - len(self.shown)

    def add(self, error: RowError) -> None:
        self.add_many([error], 1)

    def add_many(self, first: list[RowError], total: int) -> None:
        """Count `total` bad rows, of which `first` are described."""
        self.count += total
        self.shown.extend(first[: self.room])

    def raise_if_any(self) -> None:
        if self.count:
            raise BadRowsError(self.shown, self.count)
