"""Ship a trained run as the bundled ``pixdex-demo`` model.

``python -m pixdex.training.ship RUN_DIR`` writes, into ``pixdex/encoders/weights/``:

- ``pixdex-demo.safetensors``: the run's ``model.safetensors`` with floating tensors stored as float16
  (same keys as ``build_model(config).state_dict()``; loading casts them back to float32), so the file
  stays under ``MAX_BYTES``;
- ``pixdex-demo.json``: the run's ``config.json`` (ModelConfig, named ``pixdex-demo``);
- ``pixdex-demo.metrics.json``: the run's per-epoch metrics and, unless ``--eval-n 0``, the colour x shape
  precision@5 on a freshly generated demo set (a seed the training never used).
"""

from __future__ import annotations

import argparse
import sys
import json
import logging
import tempfile
from pathlib import Path
from typing import Optional

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

MAX_BYTES = 10 * 1024 * 1024
DEMO_NAME = "pixdex-demo"


def weights_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "encoders" / "weights"


def ship(run_dir, dest: Optional[Path] = None, eval_n: int = 500, eval_seed: int = 20240601) -> dict:
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
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        path = st.write_model(Path(tmp), model, config, dtype=torch.float16)
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise PixdexError(f"the float16 weights take {size / 2**20:.1f} MiB, more than "
                              f"{MAX_BYTES / 2**20:.0f} MiB: shrink the model config")
        for f in Path(tmp).iterdir():
            f.chmod(0o644)
        path.replace(dest / f"{DEMO_NAME}.safetensors")
        (Path(tmp) / st.CONFIG_FILE).replace(dest / f"{DEMO_NAME}.json")
    summary = {"source_run": metrics, "bytes": size}
    if eval_n:
        summary["fresh_set"] = evaluate_fresh(dest / f"{DEMO_NAME}.safetensors", eval_n, eval_seed)
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
    p.add_argument("--eval-n", type=int, default=500, help="images in the fresh evaluation set (0: skip)")
    p.add_argument("--eval-seed", type=int, default=20240601)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        s = ship(a.run_dir, a.dest, a.eval_n, a.eval_seed)
    except PixdexError as e:
        raise SystemExit(f"pixdex: error: {e}")
    fresh = s.get("fresh_set")
    line = f"shipped {DEMO_NAME} ({s['bytes'] / 2**20:.2f} MiB)"
    if fresh:
        line += (f"; fresh seed {fresh['seed']}: colour x shape precision@5 {fresh['precision_at_k']:.3f}, "
                 f"caption t2i R@1 {fresh['caption_t2i_r1']:.3f} R@5 {fresh['caption_t2i_r5']:.3f}")
    sys.stdout.write(line + "\n")


if __name__ == "__main__":
    main()
