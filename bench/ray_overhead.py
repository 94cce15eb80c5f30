#!/usr/bin/env python3
"""Ray's overhead on one machine: `pixdex index` plain vs `--ray` on the same folder (not a speed claim).

    python bench/ray_overhead.py [--photos DIR] [--n 400] [--model pixdex-demo] [--checkpoint random]
                                 [--cpus N] [--shard-rows 256]

Indexes the folder (default: a fresh `pixdex demo-data` set of N images) into two fresh stores, in this
process: the plain path, then the Ray path on a local Ray of --cpus CPUs (default: all). Ray's start-up
is timed apart from the run. Prints one JSON line: images, seconds and images/s of each path, Ray's
start-up, the Ray run's actors and shards. On a machine shared with other work the figures are noisy:
run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos")
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--model", default="pixdex-demo")
    ap.add_argument("--checkpoint")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--shard-rows", type=int, default=256)
    args = ap.parse_args()
    os.environ["PIXDEX_RAY_SHARD_ROWS"] = str(args.shard_rows)

    import ray

    from pixdex.indexer.run import index_paths

    tmp = Path(tempfile.mkdtemp(prefix="pixdex-ray-bench-"))
    photos = Path(args.photos) if args.photos else tmp / "photos"
    if not args.photos:
        from pixdex.training.demo_data import generate

        generate(photos, n=args.n, seed=1, image_size=256)
    kw = dict(model=args.model, checkpoint=args.checkpoint, device="cpu", json_mode=True)
    out = {"photos": str(photos), "model": args.model, "cpus": args.cpus}

    t = time.monotonic()
    plain = index_paths([photos], tmp / "plain", **kw)
    out["plain"] = {"images": plain["encoded"], "s": round(time.monotonic() - t, 2)}

    t = time.monotonic()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    out["ray_start_s"] = round(time.monotonic() - t, 2)
    t = time.monotonic()
    scaled = index_paths([photos], tmp / "ray", ray="local", **kw)
    out["ray"] = {"images": scaled["encoded"], "s": round(time.monotonic() - t, 2), **scaled["ray"]}
    ray.shutdown()
    for k in ("plain", "ray"):
        out[k]["images_per_s"] = round(out[k]["images"] / out[k]["s"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
