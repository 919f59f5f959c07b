"""geodrop's serving side: the grid, the snapshot format and the nearby lookup."""

__version__ = "0.1.0"
