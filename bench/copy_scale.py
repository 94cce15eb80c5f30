"""Copy-tier search at scale: time, peak memory and pair recall of ``copy_pairs`` with 8 dihedral
variants per image on synthetic 256-bit hashes with planted near copies.

    python bench/copy_scale.py [--sizes 100000 1000000] [--distance 31] [--check-exact 20000]

Every 10th item gets a near copy: the next item's canonical hash is one of its 8 variants with 0..D
random bits flipped (uniform). Random 256-bit hashes are at distance ~128 +- 8 from each other (a pair
within 31 by chance has probability ~1e-33), so the exact pairs within D are the planted ones;
``--check-exact N`` verifies that with the exact search at N. At each size it runs what
``copy_pairs(method="auto")`` picks (exact up to ``hamming.EXACT_MAX``, LSH above) and prints wall
time, peak memory (RSS high-water mark of this process, so sizes run in increasing order), and recall
overall and for planted distances >= D - 3. Goal (issue 10): 1M in a couple of minutes, recall >= 0.99.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixdex.dedup import hamming  # noqa: E402
from pixdex.dedup.hamming import copy_pairs  # noqa: E402


def planted(n: int, max_distance: int, seed: int = 0):
    """(dihedral (n, 8, 32), sources, flips): item s + 1 is a near copy of variant g of item s."""
    rng = np.random.default_rng(seed)
    dih = rng.integers(0, 256, (n, 8, 32), dtype=np.uint8)
    src = np.arange(0, n - 1, 10)
    g = rng.integers(0, 8, len(src))
    flips = rng.integers(0, max_distance + 1, len(src))
    bits = np.unpackbits(dih[src, g], axis=1)
    for r in range(len(src)):
        bits[r, rng.choice(256, flips[r], replace=False)] ^= 1
    dih[src + 1, 0] = np.packbits(bits, axis=1)
    return dih, src, flips


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run(n: int, D: int, method: str = "auto") -> None:
    dih, src, flips = planted(n, D)
    hashes = np.ascontiguousarray(dih[:, 0])
    picked = method
    if method == "auto":
        picked = "lsh" if n > hamming.EXACT_MAX else "exact"
    t = time.perf_counter()
    pairs = copy_pairs(hashes, D, dih, method=method)
    dt = time.perf_counter() - t
    found = pairs.as_set()
    hit = np.array([(int(s), int(s) + 1) in found for s in src])
    extra = len(found) - int(hit.sum())
    plan = hamming.plan_lsh(256, n, 8 * n, D) if picked == "lsh" else None
    print(
        f"N={n:>8} ({picked}{f', {plan.key_bits}-bit keys x {plan.tables} tables' if plan else ''}): "
        f"{dt:6.1f} s, peak RSS {peak_mib():6.0f} MiB, recall {hit.mean():.4f} "
        f"(distance >= {D - 3}: {hit[flips >= D - 3].mean():.3f}), pairs {len(found)} "
        f"(planted {len(src)}, others {extra})",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--distance", type=int, default=31)
    ap.add_argument("--check-exact", type=int, default=0, help="verify exact pairs == planted at this N")
    args = ap.parse_args()
    if args.check_exact:
        dih, src, _ = planted(args.check_exact, args.distance)
        t = time.perf_counter()
        exact = copy_pairs(np.ascontiguousarray(dih[:, 0]), args.distance, dih, method="flat").as_set()
        lsh = copy_pairs(np.ascontiguousarray(dih[:, 0]), args.distance, dih, method="lsh").as_set()
        print(
            f"N={args.check_exact}: exact search {time.perf_counter() - t:.1f} s; exact pairs == planted: "
            f"{exact == {(int(s), int(s) + 1) for s in src}}; LSH recall vs exact "
            f"{len(lsh & exact) / max(1, len(exact)):.4f}, LSH pairs not exact: {len(lsh - exact)}"
        )
    for n in sorted(args.sizes):
        run(n, args.distance)


if __name__ == "__main__":
    main()
