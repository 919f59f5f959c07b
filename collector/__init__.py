"""geodrop's collector: district-level remaining counts for the dashboard feed (not built yet)."""
