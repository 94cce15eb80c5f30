"""pixdex on a Ray cluster: ``pixdex index --ray ADDRESS`` and ``pixdex dataset dedup --ray ADDRESS``.

Needs the ``scale`` extra (``pip install "pixdex[scale]"``: Ray Data). What runs where:

- the driver (the machine running the command, holding the store): plans from the store with the plain
  run's scan diff (:mod:`pixdex.indexer.plan`), then is the one writer: it ingests finished shards
  into the store with the plain run's resolver and writes, and builds FAISS at the end;
- Ray CPU tasks (:func:`pixdex.scale.workers.decode_batch`): read, hash, decode and preprocess files
  with pixdex's own functions;
- Ray actors (:class:`pixdex.scale.workers.Embedder`, one per GPU, else CPU actors): embed and write a
  parquet shard per batch into the store's staging folder (:mod:`pixdex.scale.shards`), which must be
  reachable from the workers (one machine, or a shared file system).

Nothing here imports Ray at import time; :func:`require_ray` does, with a one-line error without it.
"""

from __future__ import annotations

import logging
import os

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

LOCAL = "local"  # --ray local: start a Ray on this machine for the run


def require_ray():
    """The ``ray`` module, or a one-line PixdexError naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise PixdexError(f'--ray needs Ray Data ({e}): pip install "pixdex[scale]"') from e
    return ray


def connect(address: str):
    """Ray, connected: an already initialised session as it is; ``local``: a new Ray on this machine;
    else ``ray.init(address=ADDRESS)`` (``auto``: the cluster ``ray start`` runs here or $RAY_ADDRESS)."""
    ray = require_ray()
    if not ray.is_initialized():
        kw = {"log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if address == LOCAL:
                ray.init(include_dashboard=False, **kw)
            else:
                ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise PixdexError(f"cannot connect to Ray at {address!r}: {str(e).splitlines()[0]}") from e
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    return ray


def env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        log.warning("ignoring %s=%r (not a number)", name, os.environ.get(name))
        return default


def embed_resources(ray, device: str) -> tuple[int, dict, str]:
    """(actors, their Ray resources, device): one actor per GPU, else ``PIXDEX_RAY_ACTORS`` CPU actors
    (default: a quarter of the cluster's CPUs, at least one) of one CPU each."""
    res = ray.cluster_resources()
    gpus = int(res.get("GPU", 0))
    if gpus and device in ("auto", "cuda"):
        return env_int("PIXDEX_RAY_ACTORS", gpus), {"num_gpus": 1}, "cuda"
    if device == "cuda":
        raise PixdexError("--device cuda: the Ray cluster has no GPU")
    cpus = int(res.get("CPU", 1))
    return env_int("PIXDEX_RAY_ACTORS", max(1, cpus // 4)), {"num_cpus": 1}, "cpu"
