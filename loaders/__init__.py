"""geodrop's offline side: sources, validation, screening and the snapshot build."""
