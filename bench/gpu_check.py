#!/usr/bin/env python3
"""The parts of bench/gpu_check.sh that run Python: each prints table rows ``name<TAB>value<TAB>note``.

    python bench/gpu_check.py env|encode|index|faiss [options]

- ``plan``: the GPU parts' rows as ``not run (no CUDA)`` (no torch import: a CPU machine's table).
- ``env``: Python, torch, CUDA device, usable cores, faiss (and whether it has GPU support).
- ``encode --models ViT-B-32,ViT-L-14 --batch 256``: bf16 parity (minimum cosine vs float32 over 64
  images) and image-tower images/s at the batch size (uint8 pixels from pinned memory, normalisation
  and bf16 autocast on the device), random weights.
- ``index --n 5000 --kind 256px|12mp``: ``pixdex index`` (a fresh process, as a user runs it) on
  generated JPEGs, decode in the loop, ViT-B-32-256 random weights; images/s of the whole run and
  of its encoding phase.
- ``faiss --n 1000000``: IVF train / add / search (10,000 queries) with pixdex's own build on the GPU.

Without CUDA every GPU part prints ``not run (no CUDA)``. Random weights: throughput does not depend on
them, and the machine has no network.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))


def row(name: str, value: str, note: str = "") -> None:
    print(f"{name}\t{value}\t{note}", flush=True)


def cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def part_env(_a) -> None:
    import platform

    from pixdex.indexer.pipeline import usable_cpus

    row("python", platform.python_version())
    try:
        import torch

        dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
        row("torch", torch.__version__, dev)
    except ImportError:
        row("torch", "not installed")
    row("cores", str(usable_cpus()), "usable (affinity mask)")
    try:
        import faiss

        from pixdex.storage.faiss_index import _gpu_count

        row("faiss", faiss.__version__, f"{_gpu_count()} GPU(s) visible to faiss")
    except ImportError:
        row("faiss", "not installed")


def _pixels(n: int, pre):
    """``n`` images as the indexer ships them (uint8, ``pre.pixels``): the shared photos, then noise."""
    import numpy as np

    from pixdex.images import draft_side, load_image

    size = pre.image_size
    photos = (
        sorted(p for p in (SHARED / "data" / "photos").glob("*") if p.is_file()) if SHARED.is_dir() else []
    )
    out = []
    for p in photos[:n]:
        try:
            out.append(pre.pixels(load_image(p, draft_side(pre))[0]))
        except Exception:  # noqa: BLE001 - a sample photo that does not decode is left out
            continue
    rng = np.random.default_rng(0)
    while len(out) < n:
        out.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return np.stack(out)


NO_CUDA = "not run (no CUDA)"


def encode_rows(m: str, batch: int) -> tuple[str, str]:
    return f"bf16 parity {m}", f"encode {m} b{batch}"


def index_row(n: int, kind: str) -> str:
    return f"index {n} x {kind}"


def faiss_row(n: int) -> str:
    return f"faiss IVF {n:,}"


def part_plan(a) -> None:
    """The GPU parts' rows as "not run (no CUDA)", without importing torch (a CPU machine's table)."""
    for m in a.models.split(","):
        for name in encode_rows(m, a.batch):
            row(name, NO_CUDA)
    for spec in a.index.split(","):
        n, kind = spec.split(":")
        row(index_row(int(n), kind), NO_CUDA)
    row(faiss_row(a.faiss), NO_CUDA)


def part_encode(a) -> None:
    if not cuda():
        for m in a.models.split(","):
            for name in encode_rows(m, a.batch):
                row(name, NO_CUDA)
        return
    import numpy as np
    import torch

    from pixdex.encoders.encoder import load_encoder

    for m in a.models.split(","):
        enc = load_encoder(m, device="cuda", random_init=True, towers=("image",))
        x = _pixels(64, enc.preprocess)
        amp = enc.autocast_dtype
        enc.autocast_dtype = None
        ref = enc.encode_images(x)
        enc.autocast_dtype = amp
        cos = float((ref * enc.encode_images(x)).sum(axis=1).min())
        row(
            f"bf16 parity {m}",
            f"{cos:.5f}",
            f"min cosine, {str(amp).replace('torch.', '')} vs float32, goal >= 0.999",
        )
        batch = np.concatenate([x] * (a.batch // len(x) + 1))[: a.batch]
        enc.encode_images(batch)
        torch.cuda.synchronize()
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < a.seconds:
            enc.encode_images(batch)
            n += len(batch)
        rate = n / (time.perf_counter() - t)
        row(
            encode_rows(m, a.batch)[1], f"{rate:,.0f} images/s", "image tower, uint8 in, bf16, random weights"
        )
        del enc
        torch.cuda.empty_cache()


def _with_comment(data: bytes, k: int) -> bytes:
    """The same JPEG with a unique comment segment: other bytes (another content hash), same pixels."""
    body = f"pixdex gpu_check {k}".encode()
    return data[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def make_photos(kind: str, n: int) -> Path:
    from PIL import Image

    out = Path(tempfile.gettempdir()) / f"pixdex-gpucheck-{kind}-{n}"
    if len(list(out.glob("*.jpg"))) >= n:
        return out
    out.mkdir(parents=True, exist_ok=True)
    bases = Path(tempfile.mkdtemp())
    mp = 12.0 if kind == "12mp" else 0.07
    tool = SHARED / "tools" / "make_photo_folder.py"
    if tool.is_file():
        subprocess.run([sys.executable, str(tool), str(bases), "16", "--megapixels", str(mp)], check=True)
    else:
        import numpy as np

        side = int((mp * 1e6 * 4 / 3) ** 0.5)
        rng = np.random.default_rng(0)
        for i in range(16):
            a = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(a).resize((side, side * 3 // 4), Image.Resampling.BICUBIC).save(
                bases / f"{i}.jpg"
            )
    datas = [p.read_bytes() for p in sorted(bases.glob("*.jpg"))]
    for k in range(n):
        (out / f"photo_{k:06d}.jpg").write_bytes(_with_comment(datas[k % len(datas)], k))
    return out


def part_index(a) -> None:
    name = index_row(a.n, a.kind)
    if not cuda() and not a.cpu:
        row(name, NO_CUDA)
        return
    from pixdex.indexer.pipeline import usable_cpus

    photos = make_photos(a.kind, a.n)
    store = Path(tempfile.mkdtemp()) / "store"
    cmd = [sys.executable, "-m", "pixdex", "index", str(photos), "--store", str(store), "--json"]
    cmd += ["--model", "ViT-B-32-256", "--checkpoint", "random", "--device", "cuda" if cuda() else "cpu"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    try:
        import pdqhash  # noqa: F401
    except ImportError:  # no wheel carried (it publishes none): index without dedup's copy hashes
        env["PIXDEX_COPY_HASHES"] = "0"
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=a.timeout)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        row(name, "failed", (p.stderr.strip().splitlines() or ["?"])[-1][:120])
        return
    s = json.loads(p.stdout)
    enc_s = s["timings_s"].get("encode", 0.0)
    row(
        name,
        f"{s['encoded'] / wall:,.0f} images/s",
        f"whole process {wall:.1f} s, {usable_cpus()} cores"
        f"{'' if env.get('PIXDEX_COPY_HASHES') != '0' else ', no copy hashes'}; encode phase "
        f"{s['encoded'] / enc_s if enc_s else 0:,.0f} images/s; waiting for decode {s['timings_s'].get('wait_decode', 0):.1f} s",
    )


def part_faiss(a) -> None:
    from pixdex.storage import faiss_index as fi

    try:
        import faiss  # noqa: F401
    except ImportError:
        row(faiss_row(a.n), "not run (faiss not installed)")
        return
    if fi._gpu_count() == 0:
        row(faiss_row(a.n), "not run (no faiss GPU support)" if cuda() else NO_CUDA)
        return
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((a.n, 512), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(a.n, dtype=np.int64)

    def fetch(sel):
        return sel, x[sel]

    t = time.perf_counter()
    vi = fi.build("ivf", 512, ids, fetch)
    build_s = time.perf_counter() - t
    q = x[rng.choice(a.n, 10_000, replace=False)]
    t = time.perf_counter()
    _, found = vi.search(q, 10)
    search_s = time.perf_counter() - t
    row(faiss_row(a.n), f"train+add {build_s:.1f} s", f"IVF{vi.nlist}, 512 dims, pixdex's build on the GPU")
    row(
        "faiss search 10,000 q",
        f"{10_000 / search_s:,.0f} queries/s",
        f"nprobe {fi.default_nprobe(vi.nlist)}, k 10",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    sub.add_parser("env")
    pl = sub.add_parser("plan")
    pl.add_argument("--models", default="ViT-B-32,ViT-L-14")
    pl.add_argument("--batch", type=int, default=256)
    pl.add_argument("--index", default="5000:256px,1000:12mp")
    pl.add_argument("--faiss", type=int, default=1_000_000)
    e = sub.add_parser("encode")
    e.add_argument("--models", default="ViT-B-32,ViT-L-14")
    e.add_argument("--batch", type=int, default=256)
    e.add_argument("--seconds", type=float, default=8.0)
    i = sub.add_parser("index")
    i.add_argument("--n", type=int, default=5000)
    i.add_argument("--kind", choices=("256px", "12mp"), default="256px")
    i.add_argument("--timeout", type=float, default=150)
    i.add_argument("--cpu", action="store_true", help="run on the CPU too (slow; a check of the script)")
    f = sub.add_parser("faiss")
    f.add_argument("--n", type=int, default=1_000_000)
    a = ap.parse_args()
    {"env": part_env, "plan": part_plan, "encode": part_encode, "index": part_index, "faiss": part_faiss}[
        a.part
    ](a)


if __name__ == "__main__":
    main()
