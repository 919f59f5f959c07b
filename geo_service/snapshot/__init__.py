"""Snapshots and their movement: the grid (grid.py), the format of one snapshot (format.py), the snapshots
folder and publishing into it (folder.py), private verified copies (staging.py), origins (origin.py) and
pulling from them (pull.py).

This package may touch files, numpy and the network of origins; it knows nothing of HTTP, the ledger or
the lookup. Its head imports nothing, so a module that needs only the grid loads only the grid.
"""
