"""pixdex.indexer."""
