"""``report.html`` of ``pixdex dataset dedup``: one self-contained page to check the labels by eye.

- a summary (rows, kept/removed, rate, counts per label, the most repeated captions);
- histograms (inline SVG, no script) of the image-caption scores with the mismatch cut marked, and of
  each distinct image's (caption's) nearest-neighbour cosine among the other distinct images (captions)
  with the thresholds marked (on a sample of :data:`NN_SAMPLE` against up to :data:`NN_BASE`: exact
  below that);
- per label, example groups side by side: each card shows the thumbnail, the key and the caption; a
  duplicate group is its kept row and the rows labelled duplicates of it, a mismatch is the row and the
  row whose image its caption matches better, a contaminated row is shown next to the ``--against``
  item it repeats, an unreadable row with its reason.

Thumbnails and the CSP come from :mod:`pixdex.dedup.html` (JPEG ``data:`` URIs, no script, the one
style block allowed by its hash); every key, caption and file name is escaped. The examples' images are
fetched by streaming the dataset once more (only the shown rows are kept in memory).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pixdex.dataset import labels as L
from pixdex.dedup.html import content_security_policy, escape, thumbnail_data_uri, thumbnail_data_uri_of_bytes
from pixdex.dedup.output import atomic_text

log = logging.getLogger(__name__)

THUMB_PX = 128
MAX_GROUPS = 12  # example groups per label
MAX_MEMBERS = 6  # cards per group
NN_SAMPLE = 2000
NN_BASE = 20000
BINS = 40

_CSS = """
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --mut: #6e7781; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; } h2 { font-size: 1.1rem; margin: 1.2rem 0 .4rem; }
.note, .mut { color: var(--mut); }
table.counts { border-collapse: collapse; } table.counts td, table.counts th { padding: .1rem .6rem;
  text-align: right; border-bottom: 1px solid #8884; } table.counts th:first-child { text-align: left; }
.hists { display: flex; flex-wrap: wrap; gap: 1rem; } .hist { width: 380px; } .hist svg { width: 380px; }
.group { border-top: 1px solid #8884; padding: .6rem 0; display: flex; flex-wrap: wrap; gap: .7rem; }
.card { width: 150px; padding: 4px; border: 2px solid transparent; border-radius: 6px; font-size: 12px;
  overflow-wrap: anywhere; } .card.kept { border-color: var(--ok); } .card.other { border-color: #8886; }
.thumb { width: 128px; height: 128px; display: flex; align-items: center; justify-content: center;
  background: #8882; } .thumb img { max-width: 128px; max-height: 128px; }
.badge { display: inline-block; padding: 0 .3rem; border-radius: 3px; background: #8883; font-weight: 600; }
.badge.kept { background: var(--ok); color: #fff; } .key { font-weight: 600; display: block; }
.caption { display: block; } .missing { color: var(--mut); padding: .3rem; text-align: center; }
"""


def write_report(path, table: L.LabelTable, emb, dataset, against_emb, against_ds, summary: dict) -> Path:
    """Write the page to ``path`` atomically; returns ``path``."""
    path = Path(path)
    sections, want, a_want = _examples(table)
    thumbs = _thumbnails(dataset, want)
    a_thumbs = _thumbnails(against_ds, a_want) if against_ds is not None and a_want else {}

    def card(i: int, badge: str, cls: str = "", against: bool = False) -> str:
        e = against_emb if against else emb
        t, reason = (a_thumbs if against else thumbs).get(i, (None, "not shown"))
        if i in getattr(e, "errors", {}):
            t, reason = None, e.errors[i]
        img = (
            f'<img src="{t}" alt="{escape(e.keys[i])}">'
            if t
            else f'<span class="missing">no thumbnail: {escape(reason)}</span>'
        )
        return (
            f'<figure class="card {cls}" data-key="{escape(e.keys[i])}"><div class="thumb">{img}</div>'
            f'<span class="badge {cls}">{escape(badge)}</span>'
            f'<span class="key">{"against " if against else ""}{escape(e.keys[i])}</span>'
            f'<span class="caption">{escape(e.captions[i])}</span>'
            f'<span class="mut">{escape(e.image_names[i])}</span></figure>'
        )

    parts = [_head(summary), _hist_section(table, emb)]
    for label in L.LABELS:
        items = sections.get(label, [])
        n = int(table.has(label).sum())
        parts.append(
            f'<section class="label" id="{label}"><h2>{escape(label)} <span class="mut">&middot; {n:,} rows'
            + (f" &middot; {len(items)} examples" if n else "")
            + "</span></h2>"
        )
        for group in items:
            parts.append('<div class="group">' + "".join(card(*c) for c in group) + "</div>")
        parts.append("</section>\n")
    with atomic_text(path) as f:
        f.write(
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{escape(content_security_policy(_CSS))}">\n'
            '<meta name="referrer" content="no-referrer">\n'
            f"<title>pixdex dataset dedup</title>\n<style>{_CSS}</style>\n</head><body>\n"
        )
        f.write("".join(parts))
        f.write("</body></html>\n")
    return path


def _fmt(x) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{float(x):.3f}"


def _examples(t: L.LabelTable):
    """Per label, a list of groups; a group is a list of ``(row, badge, css class[, against])``; and the
    dataset rows / against items whose thumbnails are needed."""
    sections: dict[str, list] = defaultdict(list)
    want: set[int] = set()
    a_want: set[int] = set()
    tiers_i, tiers_c = L.IMAGE_TIERS, L.CAPTION_TIERS
    for label in ("duplicate_pair", "duplicate_image", "duplicate_caption"):
        rows = np.flatnonzero(t.has(label))
        by_leader: dict[int, list[int]] = {}
        for r in rows.tolist():
            lead = int(t.duplicate_of[r])
            if lead in by_leader or len(by_leader) < MAX_GROUPS:
                by_leader.setdefault(lead, []).append(r)
        for lead, members in by_leader.items():
            group = [(lead, "kept" if not t.dropped[lead] else "leader", "kept")]
            for r in members[: MAX_MEMBERS - 1]:
                it, ct = tiers_i.get(int(t.image_tier[r])), tiers_c.get(int(t.caption_tier[r]))
                ev = []
                if it:
                    ev.append(f"image {it} {_fmt(t.image_score[r])}")
                if ct:
                    ev.append(f"caption {ct} {_fmt(t.caption_score[r])}")
                group.append((r, "; ".join(ev) or label, ""))
            sections[label].append(group)
            want.update(c[0] for c in group)
    for r in np.flatnonzero(t.has("mismatch"))[:MAX_GROUPS].tolist():
        group = [
            (r, f"{L.MISMATCH_REASONS.get(int(t.mismatch_reason[r]), '')} clip {_fmt(t.clip_score[r])}", "")
        ]
        w = int(t.mismatch_with[r])
        if w >= 0:
            group.append((w, f"its caption matches this image: {_fmt(t.mismatch_score[r])}", "other"))
        sections["mismatch"].append(group)
        want.update(c[0] for c in group)
    for r in np.flatnonzero(t.has("contaminated"))[:MAX_GROUPS].tolist():
        a = int(t.against_index[r])
        tier = L.AGAINST_TIERS.get(int(t.against_tier[r]), "")
        sections["contaminated"].append(
            [(r, f"{tier} {_fmt(t.against_score[r])}", ""), (a, "evaluation item", "other", True)]
        )
        want.add(r)
        a_want.add(a)
    for r in np.flatnonzero(t.has("unreadable"))[:MAX_GROUPS].tolist():
        sections["unreadable"].append([(r, "unreadable", "")])
    return sections, want, a_want


def _thumbnails(dataset, rows: set[int]) -> dict[int, tuple[str | None, str | None]]:
    """``row -> (data URI or None, reason)`` for ``rows``, streaming the dataset once more."""
    if not rows:
        return {}
    images = {}
    for row in dataset.rows():
        if row.index in rows:
            images[row.index] = (row.image, row.image_name)
            if len(images) == len(rows):
                break

    def one(item):
        from pixdex.images import DecodeError

        image, name = item
        try:
            if isinstance(image, Path):
                return thumbnail_data_uri(str(image), THUMB_PX), None
            return thumbnail_data_uri_of_bytes(image, THUMB_PX, name), None
        except (DecodeError, OSError, ValueError) as e:
            return None, str(e) or type(e).__name__

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, images.values()))
    return dict(zip(images, results))


# ----------------------------------------------------------------------------- summary and histograms


def _head(s: dict) -> str:
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{v:,}</td></tr>" for k, v in s["labels"].items())
    top = "".join(
        f'<li>{escape(c["caption"])} <span class="mut">&times;{c["rows"]:,}</span></li>'
        for c in s.get("top_captions", [])[:10]
    )
    return (
        "<header><h1>pixdex dataset dedup</h1>"
        f'<p class="summary">{s["rows"]:,} rows: {s["kept"]:,} kept, {s["removed"]:,} removed '
        f"({100 * s['removed_rate']:.1f}%) &middot; mode {escape(s['mode'])} &middot; model "
        f"{escape(s.get('model', ''))}</p>"
        f'<table class="counts"><tr><th>label</th><th>rows</th></tr>{rows}</table>'
        + (f"<h2>Most repeated captions</h2><ol>{top}</ol>" if top else "")
        + '<p class="note">Green frame: the row kept. A row may carry several labels; duplicate_of '
        "names the row it repeats.</p></header>\n"
    )


def nearest_neighbour_cosines(x: np.ndarray, sample: int = NN_SAMPLE, base: int = NN_BASE) -> np.ndarray:
    """For up to ``sample`` rows, the highest cosine with any other of up to ``base`` rows (seeded)."""
    n = len(x)
    if n < 2:
        return np.zeros(0, np.float32)
    rng = np.random.default_rng(0)
    b = np.sort(rng.choice(n, size=min(n, base), replace=False))
    q = b[np.sort(rng.choice(len(b), size=min(len(b), sample), replace=False))]
    sims = x[q] @ x[b].T
    sims[np.arange(len(q)), np.searchsorted(b, q)] = -np.inf  # not itself
    return sims.max(axis=1)


def _first_of_each(values, mask: np.ndarray) -> np.ndarray:
    """Rows of ``mask`` holding the first occurrence of their value (one row per distinct content)."""
    seen: set = set()
    out = []
    for r in np.flatnonzero(mask).tolist():
        if values[r] not in seen:
            seen.add(values[r])
            out.append(r)
    return np.asarray(out, np.int64)


def _hist_section(t: L.LabelTable, emb) -> str:
    ok = emb.readable
    clip = t.clip_score[ok]
    # nearest neighbours between distinct contents (the same bytes or text again would only add 1.0s)
    u_img = _first_of_each(emb.image_hashes, ok)
    u_cap = _first_of_each([L.normalize_caption(c) for c in emb.captions], ok)
    st = t.stats
    hists = [
        _svg_hist("image-caption score (clip)", clip, [("mismatch cut", st.get("mismatch_cut"))], "rows"),
        _svg_hist(
            "nearest other image, cosine",
            nearest_neighbour_cosines(emb.image_vectors[u_img]),
            [("image threshold", st.get("image_threshold"))],
            "distinct images",
        ),
        _svg_hist(
            "nearest other caption, cosine",
            nearest_neighbour_cosines(emb.caption_vectors[u_cap]),
            [("caption threshold", st.get("caption_threshold"))],
            "distinct captions",
        ),
    ]
    return (
        '<section id="histograms"><h2>Similarity distributions</h2><div class="hists">'
        + "".join(hists)
        + "</div></section>\n"
    )


def _svg_hist(title: str, values: np.ndarray, marks: list, unit: str) -> str:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    W, H, pad = 380, 170, 24
    marks = [(name, float(m)) for name, m in marks if m is not None and np.isfinite(m)]
    if not len(v):
        return f'<figure class="hist"><figcaption>{escape(title)}: no data</figcaption></figure>'
    lo = min([float(v.min())] + [m for _, m in marks])
    hi = max([float(v.max())] + [m for _, m in marks])
    if hi - lo < 1e-6:
        lo, hi = lo - 0.05, hi + 0.05
    counts, edges = np.histogram(v, bins=BINS, range=(lo, hi))
    top = max(int(counts.max()), 1)
    x = lambda c: pad + (c - lo) / (hi - lo) * (W - 2 * pad)  # noqa: E731
    bw = (W - 2 * pad) / BINS
    bars = "".join(
        f'<rect x="{x(edges[k]):.1f}" y="{H - pad - (H - 2 * pad) * c / top:.1f}" width="{max(bw - 1, 1):.1f}" '
        f'height="{(H - 2 * pad) * c / top:.1f}" fill="#4a7bd0"><title>{edges[k]:.3f}..{edges[k + 1]:.3f}: '
        f"{int(c)}</title></rect>"
        for k, c in enumerate(counts)
        if c
    )

    def anchor(m: float) -> str:
        return "start" if x(m) < W / 3 else "end" if x(m) > 2 * W / 3 else "middle"

    lines = "".join(
        f'<line x1="{x(m):.1f}" x2="{x(m):.1f}" y1="{pad - 6}" y2="{H - pad}" stroke="#cf222e" '
        f'stroke-width="2" class="mark"/><text x="{x(m):.1f}" y="{pad - 9}" font-size="11" fill="#cf222e" '
        f'text-anchor="{anchor(m)}">{escape(name)} {m:.3f}</text>'
        for name, m in marks
    )
    axis = (
        f'<line x1="{pad}" x2="{W - pad}" y1="{H - pad}" y2="{H - pad}" stroke="#888"/>'
        f'<text x="{pad}" y="{H - 6}" font-size="11" fill="#888">{lo:.2f}</text>'
        f'<text x="{W - pad}" y="{H - 6}" font-size="11" fill="#888" text-anchor="end">{hi:.2f}</text>'
        f'<text x="{W / 2:.0f}" y="{H - 6}" font-size="11" fill="#888" text-anchor="middle">{len(v):,} {escape(unit)}, '
        f"max bin {top:,}</text>"
    )
    return (
        f'<figure class="hist"><svg viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}">{bars}{lines}{axis}</svg>'
        f"<figcaption>{escape(title)}</figcaption></figure>"
    )


def print_summary(s: dict, stream=None) -> None:
    """The summary of a run as a table on stdout: counts per label, kept/removed, rate, time."""
    import sys

    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    t = Table("label", "rows", title=f"{s['rows']:,} rows, mode {s['mode']}", title_justify="left")
    for name, n in s["labels"].items():
        t.add_row(name, f"{n:,}")
    t.add_row("[bold]kept[/]", f"{s['kept']:,}")
    t.add_row("[bold]removed[/]", f"{s['removed']:,} ({100 * s['removed_rate']:.1f}%)")
    console.print(t)
    e = s.get("embeddings", {})
    console.print(
        f"{e.get('images_encoded', 0):,} images and {e.get('captions_encoded', 0):,} captions encoded "
        f"({e.get('images', 0):,} distinct images, {e.get('captions', 0):,} distinct captions), "
        f"model {s.get('model')}, {s['elapsed_s']:.1f} s"
    )
    for r in s.get("unreadable_reasons", []):
        console.print(f"  unreadable {r['rows']:>6}  {r['reason']}")
    for c in s.get("top_captions", [])[:5]:
        console.print(f"  repeated caption x{c['rows']:,}: {c['caption'][:100]!r}")
    for name, path in s.get("files", {}).items():
        console.print(f"{name}: {', '.join(path) if isinstance(path, list) else path}")
