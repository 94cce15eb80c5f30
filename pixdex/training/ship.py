"""Ship a trained run as the bundled ``pixdex-demo`` model.

``python -m pixdex.training.ship RUN_DIR`` writes, into ``pixdex/encoders/weights/``:

- ``pixdex-demo.safetensors``: the run's ``model.safetensors`` with floating tensors stored as float16
  (same keys as ``build_model(config).state_dict()``; loading casts them back to float32), so the file
  stays under ``MAX_BYTES``;
- ``pixdex-demo.json``: the run's ``config.json`` (ModelConfig, named ``pixdex-demo``);
- ``pixdex-demo.metrics.json``: the run's per-epoch metrics and, unless ``--eval none``, the colour x shape
  precision@5 and caption recall on several freshly generated demo sets (seeds the training never
  used, and none of the tests' seeds), with the worst and mean precision over them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
DEMO_NAME = "pixdex-demo"
# (images, seed) of the fresh evaluation sets: two of the size the demo-model test uses, two of the
# end-to-end search test's size (smaller sets hold fewer lone objects per query, which is harder)
EVAL_SETS = ((500, 20240601), (500, 31337), (300, 4242), (300, 777))


def weights_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "encoders" / "weights"


def ship(run_dir, dest: Optional[Path] = None, eval_sets: Sequence[tuple[int, int]] = EVAL_SETS) -> dict:
    import torch

    from pixdex.encoders.build import build_model
    from pixdex.encoders.checkpoint import load_checkpoint
    from pixdex.encoders.config import ModelConfig
    from pixdex.training import state as st

    run = Path(run_dir).expanduser()
    try:
        config = ModelConfig.from_dict(json.loads((run / st.CONFIG_FILE).read_text()))
        metrics = json.loads((run / st.METRICS_FILE).read_text())
    except (OSError, ValueError, TypeError) as e:
        raise PixdexError(f"{run} is not a finished `pixdex train` output: {e}") from e
    if config.name != DEMO_NAME:
        config = config.replace(name=DEMO_NAME)
    model = build_model(config)
    load_checkpoint(model, run / st.MODEL_FILE, config)
    dest = Path(dest) if dest else weights_dir()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = st.write_model(Path(tmp), model, config, dtype=torch.float16)
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PixdexError(
                f"the float16 weights take {size / 2**20:.1f} MiB, more than "
                f"{MAX_BYTES / 2**20:.0f} MiB: shrink the model config"
            )
        # world-readable: the files ship inside the package
        atomic_write(dest / f"{DEMO_NAME}.safetensors", path.read_bytes(), mode=0o644)
        atomic_write(dest / f"{DEMO_NAME}.json", (Path(tmp) / st.CONFIG_FILE).read_bytes(), mode=0o644)
    summary = {"source_run": metrics, "bytes": size}
    if eval_sets:
        fresh = [evaluate_fresh(dest / f"{DEMO_NAME}.safetensors", n, seed) for n, seed in eval_sets]
        for res in fresh:
            log.info(
                "fresh set seed %d (%d images): colour x shape P@5 %.3f, caption t2i R@5 %.3f",
                res["seed"],
                res["n"],
                res["precision_at_k"],
                res["caption_t2i_r5"],
            )
        p = [r["precision_at_k"] for r in fresh]
        summary["fresh_sets"] = fresh
        summary["precision_at_5_min"], summary["precision_at_5_mean"] = min(p), sum(p) / len(p)
    st.write_json(dest / f"{DEMO_NAME}.metrics.json", summary)
    return summary


def evaluate_fresh(weights: Path, n: int, seed: int) -> dict:
    """Colour x shape precision@5 and caption recall of ``weights`` on a new demo set."""
    from pixdex.encoders.encoder import load_encoder
    from pixdex.training.demo_data import generate
    from pixdex.training.evaluate import colour_shape_precision

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "set", n=n, seed=seed)
        enc = load_encoder(DEMO_NAME, checkpoint=weights, device="cpu")
        res = colour_shape_precision(enc, Path(tmp) / "set")
    res["seed"], res["n"] = seed, n
    return res


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m pixdex.training.ship", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="output folder of `pixdex train`")
    p.add_argument("--dest", default=None, help="where to write (default: pixdex/encoders/weights)")
    p.add_argument(
        "--eval",
        default=",".join(f"{n}:{seed}" for n, seed in EVAL_SETS),
        help="fresh evaluation sets as IMAGES:SEED,... ('none': skip)",
    )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        s = ship(a.run_dir, a.dest, _parse_sets(a.eval))
    except PixdexError as e:
        raise SystemExit(f"pixdex: error: {e}")
    line = f"shipped {DEMO_NAME} ({s['bytes'] / 2**20:.2f} MiB)"
    for fresh in s.get("fresh_sets", []):
        line += (
            f"\n  fresh seed {fresh['seed']} ({fresh['n']} images): colour x shape precision@5 "
            f"{fresh['precision_at_k']:.3f}, caption t2i R@1 {fresh['caption_t2i_r1']:.3f} "
            f"R@5 {fresh['caption_t2i_r5']:.3f}"
        )
    if "precision_at_5_min" in s:
        line += f"\n  precision@5 worst {s['precision_at_5_min']:.3f}, mean {s['precision_at_5_mean']:.3f}"
    sys.stdout.write(line + "\n")


def _parse_sets(text: str) -> tuple[tuple[int, int], ...]:
    if text.strip().lower() in ("", "none", "0"):
        return ()
    try:
        sets = tuple((int(n), int(seed)) for n, seed in (part.split(":") for part in text.split(",")))
    except ValueError as e:
        raise SystemExit(f"pixdex: error: --eval expects IMAGES:SEED,... (got {text!r})") from e
    if any(n < 1 for n, _ in sets):
        raise SystemExit("pixdex: error: --eval sets need at least 1 image")
    return sets


if __name__ == "__main__":
    main()
