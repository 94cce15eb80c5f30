"""``pixdex demo-data`` and ``pixdex train``: their options (registered in pixdex/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pixdex.cli_common import DeviceOpt


def demo_data(
    out: Path = typer.Argument(..., help="Output folder (images + manifest.csv)."),
    n: int = typer.Option(1000, "--n", help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed (different seeds give different images)."),
    image_size: int = typer.Option(128, "--image-size", help="Side of the square images in pixels."),
):
    """Write a deterministic captioned synthetic image set."""
    from pixdex.training.demo_data import generate

    path = generate(out, n=n, seed=seed, image_size=image_size)
    typer.echo(f"wrote {n} images and {path}")


def train(
    data: Path = typer.Option(
        ...,
        "--data",
        help="Manifest: CSV, JSONL or parquet; several rows for one image are "
        "alternative captions (one drawn per epoch).",
    ),
    model: str = typer.Option(..., "--model", "-m", help="Model config name or directory."),
    out: Path = typer.Option(..., "--out", help="Output directory."),
    init: Optional[Path] = typer.Option(None, "--init", help="Checkpoint to start from."),
    loss: str = typer.Option("clip", "--loss", help="clip or siglip."),
    epochs: int = typer.Option(10, "--epochs", help="Passes over the training rows."),
    batch_size: int = typer.Option(64, "--batch-size", help="Image-caption pairs per step."),
    lr: float = typer.Option(5e-4, "--lr", metavar="RATE", help="Peak learning rate (AdamW, cosine decay)."),
    weight_decay: float = typer.Option(0.1, "--weight-decay", help="AdamW weight decay."),
    warmup: int = typer.Option(100, "--warmup", help="Warm-up steps."),
    accum: int = typer.Option(1, "--accum", help="Gradient accumulation steps."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Clip the gradient norm to this (0: off)."),
    image_col: str = typer.Option(
        "image", "--image-col", metavar="COLUMN", help="Manifest column of images."
    ),
    caption_col: str = typer.Option(
        "caption", "--caption-col", metavar="COLUMN", help="Manifest column of captions."
    ),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of the images held out for validation."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (split, shuffling, initialisation)."),
    workers: int = typer.Option(2, "--workers", help="Image decoding threads."),
    device: str = DeviceOpt,
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Stop after this many optimizer steps."
    ),
    save_every: int = typer.Option(100, "--save-every", help="Optimizer steps between resume checkpoints."),
):
    """Train or fine-tune a CLIP/SigLIP model on captioned images."""
    from pixdex.training.trainer import TrainOptions
    from pixdex.training.trainer import train as run_train

    opts = TrainOptions(
        data=data,
        model=model,
        out=out,
        init=init,
        loss=loss,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        warmup=warmup,
        accum=accum,
        grad_clip=grad_clip,
        image_col=image_col,
        caption_col=caption_col,
        val_fraction=val_fraction,
        seed=seed,
        workers=workers,
        device=device,
        max_steps=max_steps,
        save_every=save_every,
    )
    run_train(opts)
