"""pixdex.storage."""
