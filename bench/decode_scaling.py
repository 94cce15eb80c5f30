#!/usr/bin/env python3
"""Decode scaling: images/s of the indexer's per-file work for 1, 2, ... N workers, threads and processes.

    python bench/decode_scaling.py [--n 48] [--max-workers N] [--seconds 3] [--photos12 DIR] [--photos256 DIR]
                                   [--json]

The per-file work is what `pixdex index`'s decode workers do (pixdex.indexer.pipeline.load_candidate:
read, hash, decode at the model's draft size, perceptual hash, resize + crop to uint8 pixels), for
ViT-B-32-256's preprocessing, on 12 MP JPEGs (decode-bound) and on 256 px JPEGs (overhead-bound), each
made once with ../shared/tools/make_photo_folder.py (else generated here). Rows: workers 1, 2, 4, ...
up to the usable cores (affinity mask), each with threads (pipeline.ordered_map) and processes
(procpool.ProcessDecoder, pixels through shared memory, pool start-up excluded), plus the JPEG backend
(simplejpeg vs Pillow's draft()) with one worker. Each figure is the best of two passes over the files.
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


def folder(kind: str, n: int, given: str | None) -> Path:
    if given:
        return Path(given)
    out = Path(tempfile.gettempdir()) / f"pixdex-decode-{kind}-{n}"
    if len(list(out.glob("*.jpg"))) >= n:
        return out
    mp = {"12mp": 12.0, "256px": 0.07}[kind]
    tool = SHARED / "tools" / "make_photo_folder.py"
    out.mkdir(parents=True, exist_ok=True)
    if tool.is_file():
        subprocess.run([sys.executable, str(tool), str(out), str(n), "--megapixels", str(mp)], check=True)
    else:  # generated: smooth random colour fields
        import numpy as np
        from PIL import Image

        rng = np.random.default_rng(0)
        side = int((mp * 1e6 * 4 / 3) ** 0.5)
        for i in range(n):
            base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(base).resize((side, side * 3 // 4), Image.Resampling.BICUBIC).save(
                out / f"photo_{i:06d}.jpg", quality=90
            )
    return out


def steps(limit: int) -> list[int]:
    out, k = [], 1
    while k < limit:
        out.append(k)
        k *= 2
    return out + [limit]


def lookahead(workers: int) -> int:
    """What `pixdex index` gives its workers: two batches of 32 and two items per worker."""
    return 2 * 32 + 2 * workers


def rate(run, files: list[str]) -> float:
    best = 0.0
    for _ in range(2):
        t = time.perf_counter()
        n = run(files)
        best = max(best, n / (time.perf_counter() - t))
    return best


def main() -> None:
    from pixdex.encoders.preprocess import Preprocessor
    from pixdex.encoders.registry import get_config
    from pixdex.indexer import procpool
    from pixdex.indexer.pipeline import load_candidate, ordered_map, usable_cpus

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48, help="files per folder")
    ap.add_argument("--max-workers", type=int, default=0, help="0: the usable cores")
    ap.add_argument("--photos12", default=None)
    ap.add_argument("--photos256", default=None)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    cores = usable_cpus()
    top = a.max_workers or cores
    pre = Preprocessor(get_config("ViT-B-32-256"))
    rows = []

    def threads(w: int):
        def run(files):
            return sum(
                1 for _, r in ordered_map(lambda p: load_candidate(p, pre), files, w, lookahead(w)) if r.ok
            )

        return run

    for kind, given in (("12mp", a.photos12), ("256px", a.photos256)):
        files = sorted(str(p) for p in folder(kind, a.n, given).glob("*.jpg"))[: a.n]
        for backend in ("pillow", "auto"):
            os.environ["PIXDEX_JPEG"] = backend
            rows.append(
                {"photos": kind, "mode": f"jpeg:{backend}", "workers": 1, "images_s": rate(threads(1), files)}
            )
        os.environ.pop("PIXDEX_JPEG", None)
        for w in steps(top):
            rows.append(
                {"photos": kind, "mode": "threads", "workers": w, "images_s": rate(threads(w), files)}
            )
            dec = procpool.ProcessDecoder(w, pre, (), lookahead=lookahead(w))
            try:
                list(
                    ordered_map(procpool._load, [(0, files[0], False)], w, 1, executor=_Keep(dec))
                )  # warm up

                def run(fs, dec=dec, w=w):
                    tasks = [(k % dec.slots, p, False) for k, p in enumerate(fs)]
                    return sum(
                        1
                        for _, r in ordered_map(procpool._load, tasks, w, dec.slots, executor=_Keep(dec))
                        if r.ok
                    )

                rows.append({"photos": kind, "mode": "processes", "workers": w, "images_s": rate(run, files)})
            finally:
                dec.shutdown()
    if a.json:
        print(json.dumps({"cores": cores, "rows": rows}, indent=2))
        return
    print(f"decode + preprocess for ViT-B-32-256, {cores} usable cores, {a.n} files per folder")
    print(f"{'photos':<7} {'mode':<16} {'workers':>7} {'images/s':>10}")
    for r in rows:
        print(f"{r['photos']:<7} {r['mode']:<16} {r['workers']:>7} {r['images_s']:>10.1f}")


class _Keep:
    """A ProcessDecoder that ordered_map does not shut down (the pool is reused between passes)."""

    def __init__(self, dec):
        self.dec = dec

    def submit(self, fn, item):
        return self.dec.submit(fn, item)

    def result(self, fut, fn, item):
        return self.dec.result(fut, fn, item)

    def shutdown(self):
        pass


if __name__ == "__main__":
    main()
