"""geodrop's serving side: geo-service and the kit the loaders and the collector build on.

Rooms (docs/architecture.md): web/ (HTTP layers), snapshot/ (grid, format, movement), nearby/ (the
lookup), ledger/ (claims' counters and records), dsn.py and config.py (leaves); at the top, the service
itself: cli, settings, app, handlers, keys, claims, tokens, status_poller, openapi.
"""

__version__ = "0.1.0"
