"""pixdex.search."""
