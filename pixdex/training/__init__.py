"""pixdex.training."""
