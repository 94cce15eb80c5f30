"""pixdex.dedup."""
