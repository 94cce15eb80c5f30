"""pixdex.encoders."""
