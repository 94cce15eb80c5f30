"""Helpers for the dedup output/action tests: small real PNG files and a hand-built report over them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pixdex.dedup.model import Member, Report, make_group, make_summary


def write_png(path: Path, seed: int, size=(64, 48)) -> Path:
    """A small real PNG (random colour blocks, deterministic for a seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    Image.fromarray(a).resize(size, Image.Resampling.NEAREST).save(path)
    return path


def member(path: Path, mid: int, root: Path, tier=None, score=None) -> Member:
    """A member described from the file on disk, as the store would have recorded it."""
    st = os.stat(path)
    with Image.open(path) as im:
        w, h, fmt = im.width, im.height, im.format
    return Member(
        id=mid,
        path=str(path),
        tier=tier,
        score=score,
        width=w,
        height=h,
        bytes=st.st_size,
        format=fmt,
        root=str(root),
        mtime_ns=st.st_mtime_ns,
    )


def build_report(root: Path, extra_names: tuple[str, ...] = ()) -> Report:
    """Three groups over real files under ``root``:

    1. ``2020/a.png`` kept; ``backup/2020/a.png`` exact (same bytes); ``small/a_small.png`` copy (3).
    2. ``b.png`` kept; ``other/b_similar.png`` semantic (0.95).
    3. ``c.png`` kept; each of ``extra_names`` (paths relative to ``root``) a copy (distance 5).
    """
    a = write_png(root / "2020" / "a.png", 1, (96, 72))
    a_exact = root / "backup" / "2020" / "a.png"
    a_exact.parent.mkdir(parents=True, exist_ok=True)
    a_exact.write_bytes(a.read_bytes())
    a_small = root / "small" / "a_small.png"
    a_small.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(a) as im:
        im.resize((48, 36)).save(a_small)
    b = write_png(root / "b.png", 2)
    b2 = write_png(root / "other" / "b_similar.png", 3)
    c = write_png(root / "c.png", 4)
    extras = [write_png(root / n, 10 + i) for i, n in enumerate(extra_names)]

    groups = [
        make_group(
            member(a, 1, root),
            [member(a_small, 3, root, "copy", 3), member(a_exact, 2, root, "exact", 1.0)],
        ),
        make_group(member(b, 4, root), [member(b2, 5, root, "semantic", 0.95)]),
        make_group(member(c, 6, root), [member(p, 7 + i, root, "copy", 5) for i, p in enumerate(extras)]),
    ]
    groups = [g for g in groups if len(g.members) > 1]
    n_images = sum(len(g.members) for g in groups)
    return Report(groups, make_summary(groups, images=n_images, thresholds={"copy": 8, "semantic": 0.9}))


def non_kept_paths(report: Report) -> set[str]:
    return {m.path for g in report.groups for m in g.members if m.path != g.keep.path}


# ---------------------------------------------------------------------- end-to-end helpers


def shared_ground_truth():
    """``(scene_of, NEARDUP_ORIGINALS)`` of bench/dedup_quality.py: the one place where the duplicate
    ground truth of ../shared/data (README plus three corrections) is written down."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "bench" / "dedup_quality.py"
    spec = importlib.util.spec_from_file_location("pixdex_bench_dedup_quality", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.scene_of, mod.NEARDUP_ORIGINALS


def run_cli(*args: str, env: dict | None = None):
    """The real console script (``python -m pixdex``-equivalent: ``pixdex.cli.main``) in a subprocess:
    (returncode, stdout, stderr)."""
    import subprocess
    import sys

    e = dict(os.environ)
    e.update(env or {})
    code = "import sys; from pixdex.cli import main; sys.argv = ['pixdex'] + sys.argv[1:]; main()"
    p = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=e, timeout=600
    )
    return p.returncode, p.stdout, p.stderr


def group_pairs_of(doc: dict) -> set[tuple[str, str]]:
    """Every unordered pair of paths that share a group of a ``--json`` report."""
    out = set()
    for g in doc["groups"]:
        paths = sorted(m["path"] for m in g["members"])
        for a in range(len(paths)):
            for b in range(a + 1, len(paths)):
                out.add((paths[a], paths[b]))
    return out
