"""Encoder speed on CPU: pixdex's engines vs open_clip eager on the same (random) weights, in one run.

    python bench/encode_cpu.py [--model ViT-B-32-256 --model ViT-B-16-SigLIP] [--batch 16] [--reps 5]
                               [--threads 2] [--no-onnx]

Per model, the image tower on one batch of the same inputs, with the same thread count, each path timed
in turn within every repetition (so load changes hit all alike); printed per path: median ms per batch,
images/s, speed relative to open_clip eager and the minimum cosine (per embedding) to open_clip's
float32 embeddings. Paths:

- ``open_clip``: ``model.encode_image(x)`` under ``torch.no_grad()``, as its users run it (the baseline);
- ``pixdex float32``: ``Encoder.encode_images`` in float32 eager (what ``--exact`` runs);
- ``pixdex int8``: the torch int8 image tower (``--backend torch``, pixdex.encoders.int8);
- ``onnx``, ``onnx-int8``: ONNX Runtime on pixdex's export, float32 and ORT's dynamic int8 quantiser
  (``--backend onnx`` / ``onnx-int8``; exported once into the user cache dir, the time printed);

then the text tower (CLIP models: pixdex vs open_clip on a batch of short captions). The goal of issue
#15 is >= 3.5x open_clip with minimum cosine >= 0.999. The int8 paths are timed after their first
(float32-checked) batch. Weights are random (no download), written once to a temporary safetensors file
and read by pixdex's checkpoint loader (open_clip's SigLIP layout is mapped by pixdex.encoders.siglip_keys).
"""

from __future__ import annotations

import argparse
import functools
import logging
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
GOAL_SPEEDUP, GOAL_COSINE = 3.5, 0.999


def _timed(paths: dict, reps: int) -> dict:
    """Median seconds per call of each path; the paths take turns within every repetition."""
    times = {k: [] for k in paths}
    for _ in range(reps):
        for k, fn in paths.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def _min_cos(a, b) -> float:
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def _reference(name: str):
    import open_clip
    import torch

    torch.manual_seed(0)  # the same weights every run: the ONNX export cached by the first run is reused
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model(name, pretrained=None).eval()


def bench(name: str, batch: int, reps: int, onnx: bool) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_file

    from pixdex.encoders.backends import apply_backend
    from pixdex.encoders.encoder import load_encoder

    ref = _reference(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
        # text: the full model in float32; image engines: the image tower alone
        enc = load_encoder(name, checkpoint=path, device="cpu", towers=("image", "text"))
        engines = {"pixdex float32": enc}
        backends = ["torch"] + (["onnx", "onnx-int8"] if onnx else [])
        for b in backends:
            e = load_encoder(name, checkpoint=path, device="cpu", towers=("image",))
            t = time.perf_counter()
            got = apply_backend(e, b)
            setup = time.perf_counter() - t
            label = "pixdex int8" if b == "torch" else b
            if b == "torch" and got != "int8":
                print(f"  ({name}: no torch int8 tower for this model)")
                continue
            if b.startswith("onnx"):
                print(f"  ({label}: export (first run only), quantise, load: {setup:.1f} s)")
            engines[label] = e
    size = enc.image_size
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    xn = x.numpy()

    def ref_img():
        with torch.no_grad():
            return torch.nn.functional.normalize(ref.encode_image(x), dim=-1).numpy()

    want = ref_img()
    paths = {"open_clip": ref_img}
    cos = {"open_clip": 1.0}
    for label, e in list(engines.items()):
        e.encode_images(xn)  # warm-up; the int8 towers check themselves against float32 here
        tower = e.model.visual
        if getattr(tower, "checked", True) is False:
            print(f"  ({label}: fell back to float32 after its check, cosine {tower.min_cosine:.5f})")
            label = f"{label} (fell back)"
        cos[label] = _min_cos(e.encode_images(xn), want)
        paths[label] = functools.partial(e.encode_images, xn)
    secs = _timed(paths, reps)
    print(f"{name}  image tower  batch {batch}  threads {torch.get_num_threads()}  reps {reps}")
    base = secs["open_clip"]
    for label, s in secs.items():
        ok = (
            ""
            if label == "open_clip"
            else ("  goal met" if base / s >= GOAL_SPEEDUP and cos[label] >= GOAL_COSINE else "")
        )
        print(
            f"  {label:15s} {s * 1000:8.1f} ms  {batch / s:7.1f} img/s  x{base / s:5.2f} vs open_clip"
            f"  min cos {cos[label]:.5f}{ok}"
        )
    if enc.config.family != "clip":
        return  # open_clip's SigLIP tokenizer needs a download: text compared for CLIP models only
    tok = open_clip.get_tokenizer(name)
    texts = (CAPTIONS * (batch // len(CAPTIONS) + 1))[:batch]

    def ref_txt():
        with torch.no_grad():
            return torch.nn.functional.normalize(ref.encode_text(tok(texts)), dim=-1).numpy()

    tcos = _min_cos(enc.encode_texts(texts), ref_txt())
    secs = _timed({"pixdex": lambda: enc.encode_texts(texts), "open_clip": ref_txt}, reps)
    print(
        f"  text: pixdex {secs['pixdex'] * 1000:.1f} ms, open_clip {secs['open_clip'] * 1000:.1f} ms"
        f"  x{secs['open_clip'] / secs['pixdex']:.2f}  min cos {tcos:.6f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", action="append", help="model name(s); default ViT-B-32-256 and ViT-B-16-SigLIP"
    )
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime paths")
    args = ap.parse_args()
    import torch

    from pixdex.encoders.onnx_backend import available

    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(args.threads)
    onnx = not args.no_onnx and available()
    if not args.no_onnx and not onnx:
        print("(onnxruntime/onnx/onnxscript not installed: ONNX Runtime paths skipped)")
    for name in args.model or ["ViT-B-32-256", "ViT-B-16-SigLIP"]:
        bench(name, args.batch, args.reps, onnx)


if __name__ == "__main__":
    main()
