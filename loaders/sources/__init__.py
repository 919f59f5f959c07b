"""Where source data comes from: one protocol (interface.py), a data-folder reader and a MySQL reader."""

from __future__ import annotations

from loaders.sources.interface import Kind, Source, SourceRow

__all__ = ["Kind", "Source", "SourceRow", "open_source"]


def open_source(spec: str) -> Source:
    """Return the source a --source argument names: a folder path or a mysql:// DSN."""
    if spec.startswith("mysql://"):
        from loaders.sources.mysql import MySQLSource

        return MySQLSource.from_dsn(spec)
    from loaders.sources.files import FolderSource

    return FolderSource.at(spec)
