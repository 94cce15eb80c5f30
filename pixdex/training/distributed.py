"""Data-parallel ``pixdex train`` across processes and machines, started by ``torchrun``.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` (and the rendezvous address) for every
process it starts; when they say more than one process, the trainer joins a process group (NCCL on
CUDA, one GPU per process: ``cuda:LOCAL_RANK``; gloo on CPU) and trains with
``DistributedDataParallel``. Without them nothing here does any work.

The run is the one-process run, split:

- **Batches.** ``--batch-size`` is the global contrastive batch. Every process computes the same epoch
  order and caption draw (pure functions of seed and epoch, :mod:`pixdex.training.data`) and encodes
  its contiguous slice of each global batch (:meth:`Dist.shard`), so N processes see exactly the
  batches of one process, and a run resumes (even with another number of processes) at the same batch.
- **Loss.** Each process gathers every process's features (:func:`gather_features`: the others'
  without gradient, its own slice with it, as open_clip's ``gather_features``) and computes the loss
  over the whole global batch (the full N x N logits, for InfoNCE and for the sigmoid loss alike), so
  every image has the whole batch as negatives. Backpropagating that loss through the local slice
  gives the local slice's share of the one-process gradient; DDP *averages* gradients over processes,
  so the loss is multiplied by the number of processes (:data:`world_size`) to make the average the
  sum, i.e. the one-process gradient. The loss's own temperature (and bias) sees the full loss on every
  process, so its gradient is already whole: :func:`undo_loss_scaling` divides it back.
- **Held-out recall.** Each process encodes a part of the held-out items; all compute the same recall.
- **Files.** Only process 0 reads and writes ``--out`` (resume state, model, metrics, progress); it
  sends the resume state to the others (:func:`from_main`), so machines need not share ``--out``.
  Every process reads the manifest and its images at the same paths.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

import numpy as np

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``world_size`` processes, this one is ``rank``."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: np.ndarray) -> np.ndarray:
        """This process's contiguous slice of a global batch (its length a multiple of world_size)."""
        n = len(batch) // self.world_size
        return batch[self.rank * n : (self.rank + 1) * n]


SINGLE = Dist()


def from_env(environ: Optional[Mapping[str, str]] = None) -> Dist:
    """The run ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), or a
    single process when they are absent."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env:
        return SINGLE
    try:
        world, rank, local = (int(env.get(k, "0")) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"))
    except ValueError as e:
        raise PixdexError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {e}") from e
    if world < 1 or not 0 <= rank < world or local < 0:
        raise PixdexError(f"bad torchrun environment: WORLD_SIZE={world} RANK={rank} LOCAL_RANK={local}")
    return Dist(world, rank, local)


def process_device(dist: Dist, device: str) -> str:
    """The device of this process: ``cuda:LOCAL_RANK`` for ``cuda``, else ``device`` (CPU)."""
    if not dist.enabled:
        return device
    if device == "cuda":
        return f"cuda:{dist.local_rank}"
    if device != "cpu":
        raise PixdexError(
            f"--device {device} under torchrun: each process takes cuda:LOCAL_RANK; "
            "use --device cuda (or auto) or cpu"
        )
    return device


@contextlib.contextmanager
def session(dist: Dist, device: str):
    """Join the process group for the run (NCCL on CUDA, gloo on CPU) and leave it at the end."""
    if not dist.enabled:
        yield
        return
    import torch
    import torch.distributed as td

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    td.init_process_group(backend=backend, world_size=dist.world_size, rank=dist.rank)
    log.info("process %d of %d joined the %s group on %s", dist.rank, dist.world_size, backend, device)
    try:
        yield
    finally:
        td.destroy_process_group()


def from_main(dist: Dist, fn: Callable[[], T]) -> T:
    """``fn()`` run by process 0 only, its result sent to every process; a ``PixdexError`` it raises is
    raised by every process (nobody is left waiting)."""
    if not dist.enabled:
        return fn()
    import torch.distributed as td

    box: list[Any] = [None]
    if dist.is_main:
        try:
            box[0] = ("ok", fn())
        except PixdexError as e:
            box[0] = ("error", (str(e), e.exit_code))
    td.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise PixdexError(value[0], exit_code=value[1])
    return value


def check_same(dist: Dist, key: dict) -> None:
    """Refuse to train when a process sees other options or other data than process 0."""
    if not dist.enabled:
        return
    import torch.distributed as td

    keys: list[Any] = [None] * dist.world_size
    td.all_gather_object(keys, key)
    for rank, other in enumerate(keys):
        differ = sorted(k for k in set(key) | set(other) if key.get(k) != other.get(k))
        if differ:
            raise PixdexError(
                f"process {rank} of the run has other options or data than process {dist.rank} "
                f"({', '.join(differ)}); every machine must read the same manifest and images"
            )


def wrap(module, dist: Dist, device: str):
    """``module`` in ``DistributedDataParallel`` for a multi-process run, else itself. On CUDA its
    BatchNorm layers (ModifiedResNet) become ``SyncBatchNorm``, which normalises over the global batch
    as one process does; PyTorch has no CPU SyncBatchNorm, so on CPU each process normalises its own
    slice (a BatchNorm model then trains slightly differently from the one-process run)."""
    if not dist.enabled:
        return module
    import torch
    from torch.nn.parallel import DistributedDataParallel

    if device.startswith("cuda"):
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        return DistributedDataParallel(module, device_ids=[torch.device(device).index])
    return DistributedDataParallel(module)


def no_sync(net, dist: Dist, sync: bool):
    """DDP's ``no_sync`` for the micro-batches before the last one of an accumulated step."""
    if not dist.enabled or sync:
        return contextlib.nullcontext()
    return net.no_sync()


def gather_features(local, dist: Dist):
    """``(world_size * n, d)``: every process's ``(n, d)`` features in rank order; only this process's
    slice (``local`` itself) carries gradient."""
    if not dist.enabled:
        return local
    import torch
    import torch.distributed as td

    parts = [torch.empty_like(local) for _ in range(dist.world_size)]
    td.all_gather(parts, local.detach().contiguous())
    parts[dist.rank] = local
    return torch.cat(parts)


def gather_arrays(part: Optional[np.ndarray], dist: Dist) -> np.ndarray:
    """Every process's rows (None: none) concatenated in rank order, on every process."""
    if not dist.enabled:
        return part
    import torch.distributed as td

    parts: list[Any] = [None] * dist.world_size
    td.all_gather_object(parts, part)
    return np.concatenate([p for p in parts if p is not None])


def undo_loss_scaling(loss_module, dist: Dist) -> None:
    """Divide the loss's own parameters' gradients by world_size (see the module docstring: the loss is
    scaled by world_size for the towers' sake, but these parameters see the whole loss everywhere)."""
    if not dist.enabled:
        return
    for p in loss_module.parameters():
        if p.grad is not None:
            p.grad.div_(dist.world_size)


def barrier(dist: Dist) -> None:
    if dist.enabled:
        import torch.distributed as td

        td.barrier()
