"""Copy-tier quality: PDQ vs pHash on ../shared/data plus generated copies, with a distance sweep.

    python bench/dedup_quality.py [--data ../shared/data] [--draft 256] [--no-speed] [--demo N | --demo-only N]
                                  [--groups | --groups-only]

Images are decoded as the indexer decodes them for the hashes (JPEG draft ``perceptual.HASH_DRAFT``,
whatever the model). Besides PDQ and pHash with their dihedral variants, ``pdq+windows`` scores what
the indexer stores (``perceptual.copy_hash_array``: 8 dihedral hashes + the crop-window hashes, each
row compared with the other images' canonical hash), which is what catches small crops. Every transform of
``pixdex.dedup.transforms`` is applied to each photos/ image and to each neardup/ group's original;
copies are saved as JPEG q95 and decoded again. Ground truth (../shared/data/README.md): a neardup/
folder is one scene; formats/mode-* are the bridge photo; exif/ are four different shots (not copies);
photos/ and the other formats/ files are distinct. Three corrections, measured here and checked by eye:
neardup/bridge-dih is the same photo as neardup/bridge (distance 0), formats/ukbench09380.webp is
photos/ukbench09380.jpg re-encoded (distance 0 pHash, 14 PDQ) and formats/alpha_channel.png is the
ukbench00120 photo mirrored, with an alpha channel (distance 0-2 pHash, 14-20 PDQ).

``--groups`` adds the end-to-end groups section on the shared photos (``groups_section``: goal-class
copies, ``pixdex index`` with pixdex-demo, exact and copy tiers under ``--keep largest`` and ``oldest``,
precision/recall per class read from the groups, as tests/test_dedup_quality.py asserts them).
``--demo N`` adds the end-to-end section: N ``pixdex demo-data`` images (those with two or more shapes;
a lone shape on a flat background is the same picture as another lone shape, for PDQ and for this
model) plus a copy by every transform, indexed with ``pixdex-demo`` and deduplicated by
``pixdex.dedup.run.find_duplicates`` with each tier alone and all tiers: pair precision/recall per
transform read from the groups, and the semantic tier's raw pair recall per goal class over a sweep
of thresholds (what the default semantic threshold was chosen on).

Prints, per hash: recall per transform for each distance D of the sweep, precision per transform,
overall precision/recall, pairs that merge different original scenes, then the recommendation
(hash, D) with its figures, and the hashing speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixdex.dedup import perceptual  # noqa: E402
from pixdex.dedup.copyeval import Labels, evaluate, kind_score, make_copy  # noqa: E402
from pixdex.dedup.hamming import copy_pairs  # noqa: E402
from pixdex.dedup.transforms import GOAL_KINDS, TRANSFORMS, names_of_kind  # noqa: E402
from pixdex.images import DecodeError, decode, read_file  # noqa: E402

SWEEP = {
    "pdq": [8, 12, 15, 20, 24, 28, 31, 36, 40, 44, 48, 56, 64],
    "phash": [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 24],
}
NEARDUP_ORIGINALS = (
    "bridge/aaa-orig.jpg",
    "bridge-dih/bridge-1-original.jpg",
    "ukbench00120/ukbench00120.jpg",
)
SAME_PHOTO = {  # ground-truth corrections, see the module docstring
    "neardup/bridge-dih": "neardup/bridge",
    "formats/ukbench09380.webp": "photos/ukbench09380.jpg",
    "formats/alpha_channel.png": "neardup/ukbench00120",
}


def scene_of(rel: str) -> str:
    parts = rel.split("/")
    if parts[0] == "neardup":
        group = "/".join(parts[:2])
        return SAME_PHOTO.get(group, group)
    if parts[0] == "formats" and parts[1].startswith("mode-"):
        return "neardup/bridge"
    return SAME_PHOTO.get(rel, rel)


def load(data: Path, draft: int):
    """(labels, images, bases): every shared file as the indexer decodes it, plus generated copies."""
    labels, images, names = Labels(), [], []
    files = sorted(p for p in data.rglob("*") if p.is_file() and p.suffix.lower() != ".md")
    index_of = {}
    for p in files:
        rel = p.relative_to(data).as_posix()
        try:
            im, _ = decode(read_file(str(p)), draft, p.name)
        except DecodeError:
            continue  # corrupt/: not an image
        index_of[rel] = labels.add(scene_of(rel))
        images.append(im)
        names.append(rel)
    bases = [r for r in names if r.startswith("photos/")] + [f"neardup/{r}" for r in NEARDUP_ORIGINALS]
    for rel in bases:
        full, _ = decode(read_file(str(data / rel)), None, rel)
        for t in TRANSFORMS:
            images.append(make_copy(full, t, lambda b: decode(b, draft)[0]))
            labels.add(labels.scene[index_of[rel]], t, index_of[rel])
            names.append(f"{rel}~{t}")
    return labels, images, names, len(bases)


def fmt_row(label: str, values, width: int = 6) -> str:
    return f"{label:<22}" + "".join(f"{v:>{width}}" for v in values)


def report(
    alg: str, labels: Labels, names: list[str], dihedral: np.ndarray, use_dihedral: bool, mode: str = ""
) -> dict:
    sweep = SWEEP[alg]
    pairs = copy_pairs(dihedral[:, 0], max(sweep), dihedral if use_dihedral else None)
    res = evaluate(labels, pairs, sweep)
    mode = mode or ("dihedral" if use_dihedral else "canonical only")
    print(f"\n=== {alg} ({perceptual.NBITS[alg]} bits), {mode}: recall per transform at distance D")
    print(fmt_row("transform \\ D", sweep))
    for t in TRANSFORMS:
        mark = "" if TRANSFORMS[t].expected else " (x)"
        print(fmt_row(t + mark, [f"{res['per_transform'][t][D].recall:.2f}" for D in sweep]))
    print("(x) = not expected to be caught by the copy tier")
    print(f"--- {alg}, {mode}: per goal class (precision / recall)")
    print(fmt_row("class \\ D", sweep, 11))
    for kind in GOAL_KINDS:
        ks = [kind_score(res, names_of_kind(kind), D) for D in sweep]
        print(fmt_row(kind, [f"{s.precision:.2f}/{s.recall:.2f}" for s in ks], 11))
    print(f"--- {alg}, {mode}: overall")
    print(fmt_row("D", sweep, 8))
    print(fmt_row("pairs found", [res["overall"][D].found for D in sweep], 8))
    print(fmt_row("precision", [f"{res['overall'][D].precision:.3f}" for D in sweep], 8))
    print(fmt_row("recall (all)", [f"{res['overall'][D].recall:.3f}" for D in sweep], 8))
    print(fmt_row("recall (expected)", [f"{res['expected'][D].recall:.3f}" for D in sweep], 8))
    print(fmt_row("false pairs", [len(res["false_pairs"][D]) for D in sweep], 8))
    print(fmt_row("merge distinct orig.", [res["false_distinct"][D] for D in sweep], 8))
    return res


def choose(alg: str, res: dict) -> int | None:
    """The largest D of the sweep at which no found pair joins two different scenes (originals or
    copies): the tier must never merge different photos, whatever recall that costs."""
    ok = [D for D in SWEEP[alg] if not res["false_pairs"][D]]
    return max(ok) if ok else None


def margin(labels: Labels, dihedral: np.ndarray) -> int:
    """Smallest distance between two shared originals of different scenes (dihedral), by brute force."""
    orig = [k for k, t in enumerate(labels.transform) if t is None]
    h = dihedral[orig]
    bits = np.unpackbits(h, axis=2).astype(np.int16)  # (n, 8, nbits)
    best = 10**9
    for a in range(len(orig)):
        d = np.abs(bits[a][:, None, :] - bits[:, 0][None, :, :]).sum(axis=2).min(axis=0)
        for b in range(len(orig)):
            if labels.scene[orig[a]] != labels.scene[orig[b]]:
                best = min(best, int(d[b]))
    return best


def speed(data: Path, draft: int, reps: int) -> None:
    big = data / "exif" / "exif-rotn-1.jpg"  # 4032 x 3024 JPEG (12 MP)
    raw = read_file(str(big))
    im_draft, _ = decode(raw, draft)
    im_full, _ = decode(raw, None)
    im_500 = im_full.resize((500, 375))
    print(
        f"\n=== hashing speed (one core busy; {reps} reps): 12 MP JPEG decoded with draft {draft} -> "
        f"{im_draft.size[0]}x{im_draft.size[1]}"
    )
    t = time.perf_counter()
    for _ in range(reps):
        decode(raw, draft)
    print(f"decode 12 MP with draft: {(time.perf_counter() - t) / reps * 1e3:.1f} ms (for reference)")
    for alg in perceptual.ALGORITHMS:
        for label, im in (("12 MP draft", im_draft), ("500 px", im_500), ("12 MP full decode", im_full)):
            n = reps if label != "12 MP full decode" else max(2, reps // 10)
            t = time.perf_counter()
            for _ in range(n):
                perceptual.dihedral_array(im, alg)
            dt = (time.perf_counter() - t) / n
            print(f"{alg:>5} dihedral_hashes  {label:<18} {dt * 1e3:7.2f} ms  {1 / dt:7.0f} images/s")
    t = time.perf_counter()
    for _ in range(reps):
        perceptual.copy_hash_array(im_draft)
    dt = (time.perf_counter() - t) / reps
    print(f"stored layout (copy_hash_array, {perceptual.COPY_ROWS} rows), 12 MP draft: {dt * 1e3:.2f} ms")


def index_cost(data: Path, reps: int) -> None:
    """What hashing adds to the indexer's per-file work (decode + preprocess in a worker thread)."""
    import os

    from pixdex.encoders.config import PreprocessConfig
    from pixdex.encoders.preprocess import Preprocessor
    from pixdex.indexer.pipeline import decode_pixels

    big = read_file(str(data / "exif" / "exif-rotn-1.jpg"))
    im, _ = decode(big, None)
    buf = __import__("io").BytesIO()
    im.resize((800, 600)).save(buf, format="JPEG", quality=90)
    print("\n=== indexer worker: decode + preprocess, without / with copy hashes (ms per image)")
    old = os.environ.get("PIXDEX_COPY_HASHES")
    try:
        for label, raw in (("12 MP JPEG", big), ("800x600 JPEG", buf.getvalue())):
            for size in (64, 224):
                pre = Preprocessor(PreprocessConfig(image_size=size))
                ms = []
                for flag in ("0", "1"):
                    os.environ["PIXDEX_COPY_HASHES"] = flag
                    decode_pixels(raw, "x", "x.jpg", pre)
                    t = time.perf_counter()
                    for _ in range(reps):
                        decode_pixels(raw, "x", "x.jpg", pre)
                    ms.append((time.perf_counter() - t) / reps * 1e3)
                print(f"{label:<13} model {size:>3} px: {ms[0]:6.1f} -> {ms[1]:6.1f} (+{ms[1] - ms[0]:.1f})")
    finally:
        if old is None:
            os.environ.pop("PIXDEX_COPY_HASHES", None)
        else:
            os.environ["PIXDEX_COPY_HASHES"] = old


def demo_section(n: int, seed: int = 7) -> None:
    """End to end on demo-data with pixdex-demo (module docstring, ``--demo``)."""
    import json
    import tempfile
    from collections import defaultdict

    from pixdex.dedup import find
    from pixdex.dedup.run import find_duplicates
    from pixdex.indexer.run import index_paths
    from pixdex.storage.store import Store
    from pixdex.training.demo_data import generate

    with tempfile.TemporaryDirectory(prefix="pixdex-bench-") as tmp:
        tmp = Path(tmp)
        generate(tmp / "gen", n=n, seed=seed)
        meta = json.loads((tmp / "gen" / "objects.json").read_text())["images"]
        (tmp / "lib").mkdir()
        from PIL import Image

        bases = 0
        for rec in meta:
            if len(rec["objects"]) < 2:
                continue
            src = tmp / "gen" / rec["image"]
            (tmp / "lib" / src.name).write_bytes(src.read_bytes())
            with Image.open(src) as im:
                im = im.convert("RGB")
                for t in TRANSFORMS:
                    TRANSFORMS[t](im).save(tmp / "lib" / f"{src.stem}~{t}.jpg", quality=95)
            bases += 1
        t0 = time.perf_counter()
        index_paths([tmp / "lib"], tmp / "store", model="pixdex-demo", json_mode=True)
        print(
            f"\n=== demo-data + pixdex-demo: {bases} images with 2+ shapes x {len(TRANSFORMS)} transforms, "
            f"indexed in {time.perf_counter() - t0:.1f} s"
        )

        def parse(path: str) -> tuple[str, str | None]:
            stem = Path(path).stem
            return (stem.split("~")[0], stem.split("~")[1]) if "~" in stem else (stem, None)

        runs = {}
        for label, tiers in (("copy", ["copy"]), ("semantic", ["semantic"]), ("all", None)):
            t0 = time.perf_counter()
            rep = find_duplicates(tmp / "store", tiers=tiers)
            dt = time.perf_counter() - t0
            same = set()
            for g in rep.groups:
                ps = [m.path for m in g.members]
                same |= {(a, b) for a in ps for b in ps if a != b}
            per = {}
            for t in TRANSFORMS:
                hits = total = touching = true = 0
                for g in rep.groups:
                    for a in g.members:
                        sa, ta = parse(a.path)
                        if ta == t:
                            for b in g.members:
                                if b is not a:
                                    touching += 1
                                    true += parse(b.path)[0] == sa
                for p in (tmp / "lib").glob(f"*~{t}.jpg"):
                    total += 1
                    hits += (str(p), str(tmp / "lib" / (parse(str(p))[0] + ".png"))) in same
                per[t] = (true / touching if touching else 1.0, hits / total if total else float("nan"))
            runs[label] = (per, rep.summary, dt)
        print(fmt_row("transform (p/r)", list(runs), 13))
        for t in TRANSFORMS:
            print(fmt_row(t, [f"{runs[k][0][t][0]:.2f}/{runs[k][0][t][1]:.2f}" for k in runs], 13))
        for k, (_, summ, dt) in runs.items():
            print(f"{k}: {summ['groups']} groups, thresholds {summ['thresholds']}, {dt:.2f} s")
        # raw semantic pair recall per goal class over a sweep (the default threshold's measurement)
        store = Store.open_readonly(tmp / "store")
        items = find.load_store_items(store, ("semantic",))
        rows = store.rows(items.ids)
        store.close()
        names = [parse(rows[int(i)].path) for i in items.ids[items.vec_pos]]
        pairs = find.semantic_within(items, 0.85)
        pos_of = {int(p): k for k, p in enumerate(items.vec_pos)}
        sweep = (0.85, 0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98)
        found = defaultdict(list)
        for i, j, s in zip(pairs.i.tolist(), pairs.j.tolist(), pairs.score.tolist()):
            found[(pos_of[i], pos_of[j])] = s
        print("--- semantic tier alone, raw pairs: precision/recall per goal class at cosine T")
        print(fmt_row("class \\ T", sweep, 11))
        for kind in GOAL_KINDS:
            ts = set(names_of_kind(kind))
            cells = []
            for T in sweep:
                got = [
                    (a, b)
                    for (a, b), s in found.items()
                    if s >= T and (names[a][1] in ts or names[b][1] in ts)
                ]
                ok = sum(names[a][0] == names[b][0] for a, b in got)
                src = {nm: k for k, nm in enumerate(names) if nm[1] is None}
                cps = [k for k, nm in enumerate(names) if nm[1] in ts]
                rec = sum(found.get(tuple(sorted((k, src[(names[k][0], None)]))), -1) >= T for k in cps)
                cells.append(f"{ok / len(got) if got else 1:.2f}/{rec / len(cps):.2f}")
            print(fmt_row(kind, cells, 11))
        print(f"default semantic threshold for pixdex-demo: {find.MODEL_THRESHOLDS.get('pixdex-demo')}")


def groups_section(data: Path, policies=("largest", "oldest")) -> None:
    """End to end on the shared photos: the goal-class copies of each base image (JPEG q95, as the
    test writes them), indexed with ``pixdex-demo``, exact and copy tiers through
    ``find_duplicates`` under each keep policy; precision/recall per goal class read from the groups
    (a copy counts when it shares a group with its original) and groups joining different scenes."""
    import shutil
    import tempfile

    from pixdex.dedup.run import find_duplicates
    from pixdex.indexer.run import index_paths

    goal = {kind: names_of_kind(kind) for kind in GOAL_KINDS}
    with tempfile.TemporaryDirectory(prefix="pixdex-bench-") as tmp:
        tmp = Path(tmp)
        lib = tmp / "data"
        shutil.copytree(data, lib, ignore=shutil.ignore_patterns("*.md"))
        bases = sorted(p.relative_to(lib).as_posix() for p in (lib / "photos").iterdir())
        bases += [f"neardup/{r}" for r in NEARDUP_ORIGINALS]
        copies = {}  # copy path -> (base rel, transform)
        (tmp / "copies").mkdir()
        for rel in bases:
            img, _ = decode(read_file(str(lib / rel)), None, rel)
            for names in goal.values():
                for t in names:
                    out = tmp / "copies" / f"{rel.replace('/', '__')}~{t}.jpg"
                    TRANSFORMS[t](img).save(out, format="JPEG", quality=95)
                    copies[str(out)] = (rel, t)
        scene = {str(p): scene_of(p.relative_to(lib).as_posix()) for p in lib.rglob("*") if p.is_file()}
        scene.update({p: scene_of(rel) for p, (rel, _) in copies.items()})
        t0 = time.perf_counter()
        index_paths([lib, tmp / "copies"], tmp / "store", model="pixdex-demo", json_mode=True)
        print(
            f"\n=== groups: shared photos + {len(copies)} goal-class copies ({len(bases)} originals), "
            f"tiers exact,copy, indexed in {time.perf_counter() - t0:.1f} s; per class precision/recall "
            "from the groups"
        )
        print(fmt_row("keep \\ class", list(goal) + ["mixed groups"], 13))
        for policy in policies:
            t0 = time.perf_counter()
            rep = find_duplicates(tmp / "store", tiers=["exact", "copy"], keep=policy)
            dt = time.perf_counter() - t0
            together = set()
            for g in rep.groups:
                ps = sorted(m.path for m in g.members)
                together |= {(a, b) for k, a in enumerate(ps) for b in ps[k + 1 :]}
            cells = []
            for names in goal.values():
                cps = [p for p, (_, t) in copies.items() if t in names]
                truth = {tuple(sorted((p, str(lib / copies[p][0])))) for p in cps}
                touching = [
                    (a, b)
                    for a, b in together
                    if copies.get(a, ("", ""))[1] in names or copies.get(b, ("", ""))[1] in names
                ]
                prec = sum(scene[a] == scene[b] for a, b in touching) / len(touching) if touching else 1.0
                cells.append(f"{prec:.2f}/{len(truth & together) / len(truth):.2f}")
            mixed = sum(len({scene[m.path] for m in g.members}) > 1 for g in rep.groups)
            print(fmt_row(policy, cells + [mixed], 13) + f"   ({len(rep.groups)} groups, {dt:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument(
        "--draft", type=int, default=perceptual.HASH_DRAFT, help="draft size the indexer hashes at"
    )
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--demo", type=int, default=0, help="also the demo-data section with N generated images")
    ap.add_argument("--demo-only", type=int, default=0, help="only the demo-data section, N images")
    ap.add_argument("--groups", action="store_true", help="also the end-to-end groups section")
    ap.add_argument("--groups-only", action="store_true", help="only the groups section")
    args = ap.parse_args()
    if args.demo_only:
        demo_section(args.demo_only)
        return
    if not args.data.is_dir():
        alt = ROOT.parents[1] / "shared" / "data"
        if not alt.is_dir():
            sys.exit(f"no shared data at {args.data}")
        args.data = alt
    if args.groups_only:
        groups_section(args.data)
        return
    t0 = time.perf_counter()
    labels, images, names, nbases = load(args.data, args.draft)
    n_orig = sum(1 for t in labels.transform if t is None)
    print(
        f"{len(images)} images: {n_orig} shared files + {len(images) - n_orig} copies "
        f"({nbases} originals x {len(TRANSFORMS)} transforms); loaded in {time.perf_counter() - t0:.1f} s"
    )
    chosen = {}
    for alg in perceptual.ALGORITHMS:
        t = time.perf_counter()
        dih = np.stack([perceptual.dihedral_array(im, alg) for im in images])
        print(f"\n{alg}: hashed {len(images)} images in {time.perf_counter() - t:.1f} s")
        res = report(alg, labels, names, dih, use_dihedral=True)
        report(alg, labels, names, dih, use_dihedral=False)
        D = choose(alg, res)
        chosen[alg] = (D, res, margin(labels, dih))
        first_false = next((res["false_pairs"][d] for d in SWEEP[alg] if res["false_pairs"][d]), [])
        print(
            f"{alg}: first false pairs: "
            + "; ".join(f"{names[a]} ~ {names[b]} @{d}" for a, b, d in first_false[:4])
        )
    t = time.perf_counter()
    stored = np.stack([perceptual.copy_hash_array(im).rows for im in images])
    print(
        f"\npdq+windows: hashed {len(images)} images in {time.perf_counter() - t:.1f} s "
        f"({perceptual.COPY_ROWS} rows each: 8 dihedral + {len(perceptual.WINDOWS)} windows)"
    )
    res = report("pdq", labels, names, stored, use_dihedral=True, mode="dihedral + crop windows (stored)")
    chosen["pdq+windows"] = (choose("pdq", res), res, margin(labels, stored))
    print("\n=== recommendation (D = largest distance with no pair joining different scenes)")
    for alg, (D, res, gap) in chosen.items():
        bits = perceptual.NBITS[alg.split("+")[0]]
        print(
            f"{alg} ({bits} bits): closest different-scene originals at distance {gap} ({gap / bits:.0%} of the bits)"
        )
        if D is None:
            print(f"{alg}: every distance of the sweep joins different scenes")
            continue
        ks = {k: kind_score(res, names_of_kind(k), D) for k in GOAL_KINDS}
        o, e = res["overall"][D], res["expected"][D]
        goal = ", ".join(
            f"{k} p={s.precision:.2f} r={s.recall:.2f}{'' if s.precision >= 0.95 and s.recall >= 0.90 else ' (MISSED)'}"
            for k, s in ks.items()
        )
        print(f"  D={D}: {goal}")
        print(
            f"  overall p={o.precision:.3f} r={o.recall:.3f}, expected-transform pairs r={e.recall:.3f}, "
            f"different-scene pairs={len(res['false_pairs'][D])}"
        )
    print(f"\ntotal {time.perf_counter() - t0:.1f} s")
    if args.groups:
        groups_section(args.data)
    if args.demo:
        demo_section(args.demo)
    if not args.no_speed:
        speed(args.data, args.draft, args.reps)
        index_cost(args.data, max(5, args.reps // 4))


if __name__ == "__main__":
    main()
