"""``pixdex export-model``: a model's towers as ONNX files for other runtimes (immich/rclip-style)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pixdex.cli_common import CheckpointOpt, echo_json
from pixdex.errors import PixdexError

FORMATS = ("onnx",)


def export_model(
    model: str = typer.Option(
        ..., "--model", "-m", help="Model name, name:pretrained_tag, or a trained model directory."
    ),
    checkpoint: Optional[Path] = CheckpointOpt,
    out: Path = typer.Option(..., "--out", help="Output folder (visual.onnx, textual.onnx, export.json)."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    towers: str = typer.Option(
        "image,text", "--towers", help="Comma-separated towers to export: image,text."
    ),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's, >= 18)."),
    fp16: bool = typer.Option(
        False, "--fp16", help="Store the weights in float16 (inputs and outputs stay float32)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print export.json's content as JSON."),
):
    """Export a model's image and text towers to ONNX, with the preprocessing and tokenizer they need."""
    if fmt.lower() not in FORMATS:
        raise PixdexError(f"unknown --format {fmt!r} (supported: {', '.join(FORMATS)})")
    from pixdex.encoders.onnx_export import FILES, MANIFEST, check_options, export_encoder

    wanted = check_options(towers.split(","), opset)
    try:
        import onnx  # noqa: F401  the exporter writes through it
    except ImportError as e:
        raise PixdexError('ONNX export needs the onnx package: pip install "pixdex[onnx]"') from e
    from pixdex.encoders.encoder import load_encoder

    enc = load_encoder(model, checkpoint=checkpoint, device="cpu", towers=wanted)
    meta = export_encoder(enc, out, towers=wanted, opset=opset, fp16=fp16)
    if json_out:
        echo_json(meta)
        return
    out = Path(out).expanduser()
    for t in wanted:
        typer.echo(f"wrote {out / FILES[t]}")
    typer.echo(f"wrote {out / MANIFEST} (dim {meta['embed_dim']}, opset {meta['opset']})")
