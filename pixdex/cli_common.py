"""What every pixdex command shares: the common options and two small helpers.

Command modules outside cli.py (one per area, e.g. ``pixdex/cli_<area>.py``) import these instead of
redefining them, and cli.py registers their functions with ``app.command(NAME)(function)``. Only typer
and the standard library are imported here, so that ``pixdex --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

StoreOpt = typer.Option(
    None, "--store", metavar="DIR", help="Store directory (default: $PIXDEX_HOME or the user data dir)."
)
ModelOpt = typer.Option(
    None,
    "--model",
    "-m",
    metavar="MODEL",
    help="Model name, name:pretrained_tag, or a trained model directory.",
)
CheckpointOpt = typer.Option(
    None, "--checkpoint", metavar="FILE", help="Weights file to load (works offline)."
)
DeviceOpt = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu or cuda.")
BatchSizeOpt = typer.Option(
    0, "--batch-size", help="Images per encoder batch (0: automatic: 32 on CPU, by free memory on CUDA)."
)
WorkersOpt = typer.Option(0, "--workers", help="Decode workers (0: one per core).")
RayOpt = typer.Option(
    None,
    "--ray",
    metavar="ADDRESS",
    help="Decode and encode on a Ray cluster: local (start one here), auto, or HOST:PORT / ray://HOST:PORT "
    '(needs pip install "pixdex[scale]").',
)
BackendOpt = typer.Option(
    None,
    "--backend",
    help="Encoder engine: torch (float32), onnx or onnx-int8 (ONNX Runtime, CPU; default torch).",
)


def store_dir(store: Optional[Path]) -> Path:
    from pixdex.paths import default_store_dir

    return Path(store).expanduser() if store else default_store_dir()


def echo_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
