"""pixdex.dataset: cross-modal deduplication of image-caption datasets.

``readers`` streams CSV/JSONL/parquet manifests and webdataset shards as rows, ``labels`` labels rows
from given image and caption vectors, ``writers`` writes ``kept.*``, ``removed.csv`` and the label table.
``dedup`` (:func:`pixdex.dataset.api.dedup`) does it all in one call; ``summary_of`` reads the summary
of its result. Nothing is imported here until used (no work at import time).
"""

__all__ = ["dedup", "summary_of"]


def __getattr__(name: str):
    if name in __all__:
        from pixdex.dataset import api

        return getattr(api, name)
    raise AttributeError(f"module 'pixdex.dataset' has no attribute {name!r}")
