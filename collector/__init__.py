"""geodrop's collector: district-level remaining counts, task status and the dashboard feed."""
