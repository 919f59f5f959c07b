"""Snapshots and their movement: the grid, the format, the snapshots folder, private copies, origins, pulling.

This package may touch files, numpy and the network of origins; it knows nothing of HTTP, the ledger or
the lookup. Its head names what the loaders, the service and the collector use of the format and folder.
"""

from geo_service.snapshot.folder import (
    TMP_PREFIX,
    current_seq,
    install_pulled,
    list_seqs,
    locked,
    open_current,
    prune,
    remove_stale_tmp,
    rollback,
    write_snapshot,
)
from geo_service.snapshot.format import (
    MAX_ROWS,
    MICRO,
    ROW_ARRAYS,
    ROW_BYTES,
    VERSION,
    DistrictRow,
    Manifest,
    PrizeRow,
    Snapshot,
    SnapshotError,
    StorageError,
    TaskRow,
    open_snapshot,
    parse_manifest,
    read_manifest,
    read_tables,
    storage_error,
    verify_file,
)

__all__ = [
    "DistrictRow", "MAX_ROWS", "MICRO", "Manifest", "PrizeRow", "ROW_ARRAYS", "ROW_BYTES", "Snapshot",
    "SnapshotError", "StorageError", "TMP_PREFIX", "TaskRow", "VERSION", "current_seq", "install_pulled",
    "list_seqs", "locked", "open_current", "open_snapshot", "parse_manifest", "prune", "read_manifest",
    "read_tables", "remove_stale_tmp", "rollback", "storage_error", "verify_file", "write_snapshot",
]
