"""Encoder speed on CPU: pixdex vs open_clip eager on the same (random) weights, in one run.

    python bench/encode_cpu.py [--model ViT-B-32-256] [--batch 16] [--reps 5] [--threads 2]

Prints, per model: median seconds per batch for image encoding and for text encoding (a batch of short
captions), the pixdex/open_clip ratio (< 1: pixdex is faster) and the max |difference| of the outputs.
open_clip runs as its users run it: ``model.encode_image(x)`` / ``encode_text(tokenizer(texts))`` under
``torch.no_grad()``; pixdex runs through ``Encoder.encode_images`` / ``encode_texts`` (numpy in and out,
normalised). Weights are random (no download), written once to a temporary safetensors file.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAPTIONS = [
    "a photo of a dog",
    "a red car parked on the street",
    "sunset over the mountains",
    "two people hiking",
    "a bowl of fruit on a table",
    "a cat sleeping on a sofa",
    "city at night",
    "a child playing football",
]


def _median_time(fn, reps):
    fn()  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench(name: str, batch: int, reps: int) -> None:
    import numpy as np
    import open_clip
    import torch
    from safetensors.torch import save_file

    from pixdex.encoders.encoder import load_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = open_clip.create_model(name, pretrained=None).eval()
    tok = open_clip.get_tokenizer(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        enc = load_encoder(name, checkpoint=path, device="cpu")
    size = enc.image_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()
    texts = (CAPTIONS * (batch // len(CAPTIONS) + 1))[:batch]

    def ref_img():
        with torch.no_grad():
            return torch.nn.functional.normalize(ref.encode_image(x), dim=-1)

    def ref_txt():
        with torch.no_grad():
            return torch.nn.functional.normalize(ref.encode_text(tok(texts)), dim=-1)

    d_img = np.abs(enc.encode_images(xn) - ref_img().numpy()).max()
    d_txt = np.abs(enc.encode_texts(texts) - ref_txt().numpy()).max()
    rows = []
    for label, a, b in (
        ("image", lambda: enc.encode_images(xn), ref_img),
        ("text", lambda: enc.encode_texts(texts), ref_txt),
    ):
        # interleave the two so that load changes hit both alike
        ta, tb = [], []
        for _ in range(reps):
            ta.append(_median_time(a, 1))
            tb.append(_median_time(b, 1))
        rows.append((label, statistics.median(ta), statistics.median(tb)))
    print(
        f"{name}  batch {batch}  threads {torch.get_num_threads()}  max|diff| image {d_img:.1e} text {d_txt:.1e}"
    )
    for label, ta, tb in rows:
        print(
            f"  {label:5s}  pixdex {ta * 1000:8.1f} ms   open_clip {tb * 1000:8.1f} ms   ratio {ta / tb:5.2f}"
            f"   ({batch / ta:6.1f} vs {batch / tb:6.1f} per s)"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", help="model name(s); default ViT-B-32-256")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    for name in args.model or ["ViT-B-32-256"]:
        bench(name, args.batch, args.reps)


if __name__ == "__main__":
    main()
