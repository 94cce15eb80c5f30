"""pixdex: local-first semantic image search and dataset deduplication."""

__version__ = "0.1.0"
