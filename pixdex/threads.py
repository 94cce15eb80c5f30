"""Thread-count policies: one BLAS thread for queries, the torch thread count of an encoding run.

No numpy or torch import at module level: :func:`single_thread_blas` must run before numpy is imported
(``pixdex search``'s text path imports neither torch nor SQLAlchemy).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Optional

SMALL_TOWER_WIDTH = 256  # image towers narrower than this run faster on one torch thread


def single_thread_blas() -> None:
    """Use one BLAS thread unless the user chose otherwise; call before numpy is imported.

    A query runs many tiny matmuls (the numpy text tower on a handful of tokens): with several BLAS
    threads on a busy 2-core machine the hand-offs dominate (measured 400-1100 ms vs 40-80 ms).
    """
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")


def _vision_width(encoder) -> Optional[int]:
    """The width of a transformer image tower (ViT or SigLIP), from the encoder's config; else None."""
    vision = getattr(getattr(encoder, "config", None), "vision", None)
    if vision is None or getattr(vision, "kind", None) not in ("vit", "siglip"):
        return None
    return int(vision.width)


@contextlib.contextmanager
def cpu_threads(encoder, n: Optional[int] = None) -> Iterator[int]:
    """Run with ``n`` torch threads (default: 1 for tiny image towers, as tiny test models run faster on
    one thread than on two busy cores; else unchanged); restore the setting afterwards."""
    import torch

    before = torch.get_num_threads()
    if n is None:
        width = _vision_width(encoder)
        n = 1 if (width is not None and width < SMALL_TOWER_WIDTH) else before
    n = max(1, min(int(n), before if before > 0 else 1))
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if n != before:
            torch.set_num_threads(before)


def uses_all_cores(enc, nthreads: Optional[int]) -> bool:
    """Whether the encoder runs on the CPU with a thread on every core (then decoding waits for it)."""
    if not str(getattr(enc, "device", "cpu")).startswith("cpu"):
        return False
    if nthreads is None:
        import torch

        nthreads = torch.get_num_threads()
    return nthreads >= (os.cpu_count() or 1)
