"""``pixdex train``: contrastive training / fine-tuning of a CLIP or SigLIP model on captioned images.

- Model: ``--model`` names the config (a registry name, ``name:tag`` or a trained model directory).
  Weights start from ``--init`` (a weights file or a model directory) when given, else from the
  directory's / pretrained tag's weights, else a seeded random init (a bare registry name).
- Data: manifest rows naming the same image are its alternative captions (COCO-style); each epoch
  trains every image once, with one of its captions drawn at random (``pixdex.training.data``).
  Identical captions in one batch are marked as positives of each other for the loss.
- Loss: ``clip`` (InfoNCE) or ``siglip`` (sigmoid), each with its learnable temperature (and bias), see
  ``pixdex.training.losses``; the trained values are written into the model's ``logit_scale``
  (and ``logit_bias`` when the model has one).
- AdamW without weight decay on gains, biases, embeddings and logit parameters; linear warm-up then
  cosine decay per optimizer step; gradient clipping; gradient accumulation over ``accum`` micro-batches
  (each micro-batch is its own contrastive batch); autocast on CUDA (bf16, or fp16 with a grad scaler),
  fp32 on CPU.
- Resumable: ``OUT/resume.pt`` is written every ``save_every`` steps and at each epoch's end; running the
  same command again continues from the last saved step (model, optimizer, scheduler, scaler, RNG and
  data order, which is a pure function of seed and epoch). Different options for the same ``OUT`` are
  refused.
- Several processes: under ``torchrun`` (``torchrun --nproc_per_node N -m pixdex train ...``) the run
  is data-parallel and trains the one-process model: ``--batch-size`` is the global batch, each process
  encodes its slice and the loss sees all of it (``pixdex.training.distributed``).
- Each epoch: held-out recall@1/5 both ways (``pixdex.training.evaluate``), logged and written to
  ``OUT/metrics.json``; ``OUT/model.safetensors`` + ``OUT/config.json`` are usable as ``--model OUT``.

The bundled ``pixdex-demo`` model is reproduced on CPU (about 20 minutes on 2 cores) with::

    pixdex demo-data /tmp/pixdex-demo-data --n 20000 --seed 0
    pixdex train --data /tmp/pixdex-demo-data/manifest.csv --model pixdex-demo --loss clip \\
        --epochs 20 --batch-size 128 --lr 1e-3 --warmup 200 --out /tmp/pixdex-demo-run
    python -m pixdex.training.ship /tmp/pixdex-demo-run

(the figures of the shipped run are in ``pixdex/encoders/weights/pixdex-demo.metrics.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.training import state as st

log = logging.getLogger(__name__)

NO_DECAY_NAME_PARTS = ("embedding", "logit_scale", "logit_bias")
# options that change the training trajectory: a resumed run must use the same values
TRAJECTORY_KEYS = (
    "model",
    "init",
    "loss",
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup",
    "accum",
    "grad_clip",
    "image_col",
    "caption_col",
    "val_fraction",
    "seed",
    "max_steps",
)


@dataclass
class TrainOptions:
    data: Path
    model: str
    out: Path
    init: Optional[Path] = None
    loss: str = "clip"
    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup: int = 100
    accum: int = 1
    grad_clip: float = 1.0
    image_col: str = "image"
    caption_col: str = "caption"
    val_fraction: float = 0.1
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    max_steps: Optional[int] = None
    save_every: int = 100  # optimizer steps between resume states (and at every epoch's end)
    progress: bool = True  # rich progress on stderr
    cache_bytes: int = 2 << 30  # keep decoded images in memory up to this size


def _validate(o: TrainOptions) -> None:
    checks = [
        (o.epochs >= 1, f"--epochs must be at least 1, got {o.epochs}"),
        (o.batch_size >= 2, f"--batch-size must be at least 2 (contrastive batches), got {o.batch_size}"),
        (o.lr > 0, f"--lr must be positive, got {o.lr}"),
        (o.weight_decay >= 0, f"--weight-decay must be >= 0, got {o.weight_decay}"),
        (o.warmup >= 0, f"--warmup must be >= 0, got {o.warmup}"),
        (o.accum >= 1, f"--accum must be at least 1, got {o.accum}"),
        (o.grad_clip >= 0, f"--grad-clip must be >= 0 (0: off), got {o.grad_clip}"),
        (o.max_steps is None or o.max_steps >= 1, f"--max-steps must be at least 1, got {o.max_steps}"),
        (o.save_every >= 1, f"save_every must be at least 1, got {o.save_every}"),
        ((o.loss or "").lower() in ("clip", "siglip"), f"unknown loss {o.loss!r} (expected clip or siglip)"),
    ]
    for ok, msg in checks:
        if not ok:
            raise PixdexError(msg)


def resolve_model(spec: str, init: Optional[Path]):
    """``(config, weights file or None, model dir for tokenizer files)`` for ``--model`` / ``--init``."""
    from pixdex.encoders import registry
    from pixdex.encoders.spec import resolve_spec

    name, tag = registry.parse_spec(str(spec))
    weights = None
    if init is not None:
        p = Path(init).expanduser()
        weights = p / st.MODEL_FILE if p.is_dir() else p
        if not weights.is_file():
            raise PixdexError(f"--init {init}: no such weights file")
    # a directory with only config.json (no model.safetensors) is trained from scratch
    has_dir_weights = registry.is_model_dir(name) and (Path(name).expanduser() / st.MODEL_FILE).is_file()
    from_weights = init is None and (has_dir_weights or tag is not None)
    resolved = resolve_spec(str(spec), random_init=not from_weights)
    if weights is None:
        weights = resolved.weights
    return resolved.config, weights, resolved.model_dir


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, span) / span))


def param_groups(named_params, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(part in name for part in NO_DECAY_NAME_PARTS):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _fingerprint(samples) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.path}\0{s.caption}\n".encode())
    return h.hexdigest()[:16]


def _run_key(o: TrainOptions, samples, config) -> dict:
    d = asdict(o)
    key = {k: (str(d[k]) if isinstance(d[k], Path) else d[k]) for k in TRAJECTORY_KEYS}
    key["init"] = str(Path(o.init).expanduser().resolve()) if o.init else None
    key["data"] = _fingerprint(samples)
    key["n_rows"] = len(samples)
    key["config"] = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    return key


class _Reporter:
    """Rich progress on stderr; plain lines instead when stderr is not a terminal."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.enabled = enabled
        self.progress = None
        self.console = None
        self.every = max(1, total // 40)
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            self.progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  T {task.fields[temp]:.4f}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
            self.task = self.progress.add_task(
                "train", total=total, completed=start, loss=float("nan"), temp=float("nan")
            )

    def step(self, step: int, total: int, loss: float, temp: float, lr: float) -> None:
        if not self.enabled:
            return
        if self.progress is not None:
            self.progress.update(self.task, completed=step, loss=loss, temp=temp)
        elif step % self.every == 0 or step == total:
            self.console.print(
                f"step {step}/{total} loss {loss:.4f} T {temp:.4f} lr {lr:.2e}", soft_wrap=True
            )

    def line(self, text: str) -> None:
        log.info(text)
        if self.enabled:
            self.console.print(text, soft_wrap=True, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def _encode_all(model, images, ids, idx, device, batch=256) -> tuple[np.ndarray, np.ndarray]:
    import torch
    import torch.nn.functional as F

    ie, te = [], []
    with torch.no_grad():
        for i in range(0, len(idx), batch):
            b = idx[i : i + batch]
            x = torch.from_numpy(images.batch(b)).to(device)
            t = torch.from_numpy(ids[b]).to(device)
            ie.append(F.normalize(model.encode_image(x).float(), dim=-1).cpu().numpy())
            te.append(F.normalize(model.encode_text(t).float(), dim=-1).cpu().numpy())
    return np.concatenate(ie), np.concatenate(te)


def evaluate_split(model, images, ids, captions, idx, device, dist=None) -> dict[str, float]:
    """Held-out recall of the items ``idx``; with several processes each encodes a contiguous part."""
    from pixdex.training import distributed
    from pixdex.training.evaluate import recall_at_k

    dist = dist or distributed.SINGLE
    part = np.array_split(np.asarray(idx), dist.world_size)[dist.rank]
    was_training = model.training
    model.eval()
    try:
        ie, te = _encode_all(model, images, ids, part, device) if len(part) else (None, None)
    finally:
        model.train(was_training)
    ie, te = distributed.gather_arrays(ie, dist), distributed.gather_arrays(te, dist)
    return recall_at_k(ie, te, [captions[i] for i in idx])


def train(o: TrainOptions) -> dict:
    """Run (or resume) training; returns a summary (steps, final metrics, output paths).

    Under ``torchrun`` with several processes this process trains its share of every global batch with
    ``DistributedDataParallel`` (:mod:`pixdex.training.distributed`); process 0 writes the outputs."""
    from pixdex.encoders.encoder import resolve_device
    from pixdex.training import distributed

    _validate(o)
    dist = distributed.from_env()
    device = distributed.process_device(dist, resolve_device(o.device))
    with distributed.session(dist, device):
        return _train(o, dist, device)


def _load_saved(out: Path, key: dict) -> Optional[dict]:
    """The resume state of the same run in ``out`` (None when there is none); another run's is refused."""
    st.check_out_dir(out)
    saved = st.load_resume(out)
    if saved is not None:
        differ = sorted(
            k for k in set(key) | set(saved.get("key", {})) if key.get(k) != saved.get("key", {}).get(k)
        )
        if differ:
            raise PixdexError(
                f"--out {out} holds a run with other options ({', '.join(differ)}); "
                "use the same command to resume, or another --out"
            )
    return saved


def _train(o: TrainOptions, dist, device: str) -> dict:
    import torch

    from pixdex.encoders.build import build_model
    from pixdex.encoders.layers import MultiheadAttention
    from pixdex.encoders.preprocess import Preprocessor
    from pixdex.encoders.tokenizer import get_tokenizer
    from pixdex.training import distributed
    from pixdex.training.data import (
        ImageSource,
        caption_draw,
        epoch_order,
        group_by_image,
        micro_batches,
        split_indices,
        tokenize_captions,
    )
    from pixdex.training.losses import TrainingPair, make_loss, same_caption_matrix
    from pixdex.training.manifest import read_manifest

    out = Path(o.out).expanduser()
    samples = read_manifest(o.data, o.image_col, o.caption_col)
    config, init_weights, model_dir = resolve_model(o.model, o.init)
    key = _run_key(o, samples, config)
    distributed.check_same(dist, key)
    # only process 0 reads --out; the others get the state from it
    saved = distributed.from_main(dist, lambda: _load_saved(out, key))
    if saved is not None:
        if saved.get("done"):
            log.info("%s: this run already finished (%d steps)", out, saved["step"])
            return {
                "out": str(out),
                "steps": saved["step"],
                "resumed": True,
                "done": True,
                "history": saved.get("history", []),
            }
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)

    # rows naming the same image are its alternative captions: the image is the training item
    image_samples, caption_rows = group_by_image(samples)
    train_idx, val_idx = split_indices(len(image_samples), o.val_fraction, o.seed)
    batch = min(o.batch_size, len(train_idx))
    if batch % dist.world_size:
        raise PixdexError(
            f"the batch of {batch} pairs does not split evenly over {dist.world_size} processes; "
            "make --batch-size (the global batch) a multiple of the number of processes"
        )
    micro_per_epoch = len(train_idx) // batch
    steps_per_epoch = max(1, micro_per_epoch // o.accum)
    accum = min(o.accum, micro_per_epoch)
    total = steps_per_epoch * o.epochs
    if o.max_steps is not None:
        total = min(total, o.max_steps)

    pre = Preprocessor(config)
    tokenizer = get_tokenizer(config, model_dir)
    row_ids = tokenize_captions(tokenizer, [s.caption for s in samples], config.text.context_length)
    first_rows = np.asarray([r[0] for r in caption_rows], dtype=np.int64)
    captions = [samples[r].caption for r in first_rows]  # held-out recall uses each image's first caption
    ids = row_ids[first_rows]
    t0 = time.time()
    images = ImageSource(image_samples, pre, workers=o.workers, cache_bytes=o.cache_bytes)
    log.info(
        "%d images with %d captions (%d train, %d held out) ready in %.1fs",
        len(image_samples),
        len(samples),
        len(train_idx),
        len(val_idx),
        time.time() - t0,
    )

    torch.manual_seed(o.seed)
    model = build_model(config)
    if init_weights is not None:
        from pixdex.encoders.checkpoint import load_checkpoint

        load_checkpoint(model, init_weights, config)
    kind = o.loss.lower()
    has_bias = getattr(model, "logit_bias", None) is not None
    if kind == "clip":
        loss_fn = make_loss("clip", float(model.logit_scale.detach()))
    elif has_bias:
        loss_fn = make_loss("siglip", float(model.logit_scale.detach()), float(model.logit_bias.detach()))
    else:
        loss_fn = make_loss("siglip")
    # the loss owns the temperature while training; it is copied into the model when saving
    model.logit_scale.requires_grad_(False)
    if has_bias:
        model.logit_bias.requires_grad_(False)
    model.to(device).train()
    loss_fn.to(device)
    params = list(model.named_parameters()) + [(f"loss.{n}", p) for n, p in loss_fn.named_parameters()]
    opt = torch.optim.AdamW(param_groups(params, o.weight_decay), lr=o.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, o.warmup, total))
    use_cuda = device.startswith("cuda")
    amp_dtype = torch.bfloat16 if use_cuda and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda and amp_dtype == torch.float16)

    step, history = 0, []
    run_loss, run_n = 0.0, 0  # the current epoch's summed step losses, for its mean
    if saved is not None:
        model.load_state_dict(saved["model"])
        loss_fn.load_state_dict(saved["loss"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng_torch"])
        if use_cuda and saved.get("rng_cuda") is not None:
            torch.cuda.set_rng_state_all(saved["rng_cuda"])
        step, history = int(saved["step"]), list(saved.get("history", []))
        run_loss, run_n = float(saved.get("run_loss", 0.0)), int(saved.get("run_n", 0))
        log.info("resuming %s at step %d of %d", out, step, total)
    # one forward for both towers, in DDP when several processes train (DDP syncs the weights from
    # process 0 and averages the gradients of the towers and of the loss's temperature)
    net = distributed.wrap(TrainingPair(model, loss_fn, amp_dtype if use_cuda else None), dist, device)

    def sync_logits():
        with torch.no_grad():
            model.logit_scale.copy_(loss_fn.logit_scale)
            if has_bias and getattr(loss_fn, "logit_bias", None) is not None:
                model.logit_bias.copy_(loss_fn.logit_bias)

    def save_state(done: bool) -> None:
        st.save_resume(
            out,
            {
                "key": key,
                "step": step,
                "done": done,
                "history": history,
                "run_loss": run_loss,
                "run_n": run_n,
                "model": model.state_dict(),
                "loss": loss_fn.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "scaler": scaler.state_dict(),
                "rng_torch": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if use_cuda else None,
            },
        )

    def write_outputs(done: bool) -> None:
        sync_logits()
        if not dist.is_main:
            return
        st.write_model(out, model, config)
        st.write_json(
            out / st.METRICS_FILE,
            {"key": key, "steps": step, "total_steps": total, "done": done, "epochs": history},
        )
        save_state(done)

    reporter = _Reporter(o.progress and dist.is_main, total, step)
    if dist.is_main:
        reporter.line(
            f"training {config.name} on {len(train_idx)} images ({len(val_idx)} held out, "
            f"{len(samples)} captions in all), "
            f"{total} steps of {batch}x{accum}, loss {kind}, device {device}"
            + (f" x {dist.world_size} processes" if dist.enabled else "")
            + (f", resuming at step {step}" if step else "")
        )
    started = time.time()
    mbs_epoch, mbs = -1, []
    try:
        while step < total:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            if epoch != mbs_epoch:
                order = train_idx[epoch_order(len(train_idx), o.seed, epoch)]
                mbs_epoch, mbs = epoch, micro_batches(order, o.batch_size)
                drawn = caption_draw(caption_rows, o.seed, epoch)
            opt.zero_grad(set_to_none=True)
            step_loss = 0.0
            for m in range(accum):
                gb = mbs[in_epoch * accum + m]  # the global batch; this process encodes its slice
                b = dist.shard(gb)
                x = torch.from_numpy(images.batch(b)).to(device, non_blocking=True)
                t = torch.from_numpy(row_ids[drawn[b]]).to(device, non_blocking=True)
                same = same_caption_matrix(torch.from_numpy(row_ids[drawn[gb]]).to(device))
                # identical captions in one batch ("a red circle" twice) are not each other's negatives
                positives = same if int(same.sum()) > len(gb) else None
                with distributed.no_sync(net, dist, sync=m == accum - 1):
                    ie, te = net(x, t)
                    ie, te = distributed.gather_features(ie, dist), distributed.gather_features(te, dist)
                    loss = loss_fn(ie, te, positives=positives) / accum
                    # x world_size: DDP averages the processes' shares of the gradient (see distributed)
                    scaler.scale(loss * dist.world_size).backward()
                step_loss += float(loss.detach())
            distributed.undo_loss_scaling(loss_fn, dist)
            for m in model.modules():  # gradients that are rounding noise (see drop_key_bias_grad)
                if isinstance(m, MultiheadAttention):
                    m.drop_key_bias_grad()
            if not math.isfinite(step_loss):
                raise PixdexError(
                    f"the loss became {step_loss} at step {step + 1}; lower --lr "
                    "(the last good state is in --out)"
                )
            if o.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_([p for _, p in params if p.requires_grad], o.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_fn.clamp_()
            step += 1
            run_loss, run_n = run_loss + step_loss, run_n + 1
            reporter.step(step, total, step_loss, loss_fn.temperature(), sched.get_last_lr()[0])
            epoch_end = step % steps_per_epoch == 0 or step == total
            if epoch_end:
                entry = {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": run_loss / max(1, run_n),
                    "temperature": loss_fn.temperature(),
                    "seconds": round(time.time() - started, 1),
                }
                if len(val_idx):
                    entry["val"] = evaluate_split(model, images, ids, captions, val_idx, device, dist)
                history.append(entry)
                if dist.is_main:
                    reporter.line(_epoch_line(entry))
                run_loss, run_n = 0.0, 0
                write_outputs(done=step == total)
                distributed.barrier(dist)  # the epoch's outputs are written before anyone goes on
            elif step % o.save_every == 0 and dist.is_main:
                save_state(done=False)
    finally:
        reporter.close()
        images.close()
    return {
        "out": str(out),
        "steps": step,
        "total_steps": total,
        "history": history,
        "done": True,
        "model": str(out / st.MODEL_FILE),
        "seconds": round(time.time() - started, 1),
    }


def _epoch_line(e: dict) -> str:
    text = f"epoch {e['epoch']} step {e['step']}: loss {e['train_loss']:.4f} T {e['temperature']:.4f}"
    v = e.get("val")
    if v:
        text += (
            f" | held-out i2t R@1 {v['i2t_r1']:.3f} R@5 {v['i2t_r5']:.3f}"
            f" t2i R@1 {v['t2i_r1']:.3f} R@5 {v['t2i_r5']:.3f}"
        )
    return text
