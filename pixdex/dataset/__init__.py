"""pixdex.dataset: cross-modal deduplication of image-caption datasets.

``readers`` streams CSV/JSONL/parquet manifests and webdataset shards as rows, ``labels`` labels rows
from given image and caption vectors, ``writers`` writes ``kept.*``, ``removed.csv`` and the label table.
Nothing is imported here (no work at import time).
"""
