"""Embeddings in and out of pixdex: ``pixdex export`` / ``pixdex import`` (clip-retrieval's layout or one
parquet file; :mod:`pixdex.exchange.layout`)."""
