"""``pixdex dedup --html FILE``: one self-contained HTML page showing each group side by side.

- Thumbnails (JPEG, :data:`THUMB_PX` px on the long side) are made with Pillow from the files through
  the project's decoder and embedded as ``data:`` URIs; the page loads nothing else.
- A strict Content-Security-Policy: ``default-src 'none'``, images only from ``data:``, the one style
  block allowed by its hash, no script at all (the page has none). Every path and name is escaped with
  :func:`html.escape` as well, so a file named ``<script>...`` is shown as text even without the CSP.
- Bounded size: the first ``max_groups`` groups (at most ``max_members`` thumbnails per group, and no
  more groups once ``max_thumbnails`` are embedded); the page says how many groups and members were
  left out (the JSON and CSV outputs have them all).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pixdex.dedup.model import Group, Member, Report
from pixdex.dedup.output import atomic_text, display_path, human_bytes, score_text, summary_line

log = logging.getLogger(__name__)

THUMB_PX = 160
HTML_MAX_GROUPS = 500
HTML_MAX_MEMBERS = 24
HTML_MAX_THUMBNAILS = 2000  # ~6.5 kB each: the page stays under ~15 MB
JPEG_QUALITY = 75

_CSS = """
:root { color-scheme: light dark; --ok: #1a7f37; --mut: #6e7781; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
h2 { font-size: 1rem; margin: 0 0 .4rem; }
h2 .meta, .note, .path, .missing { color: var(--mut); font-weight: normal; }
.group { border-top: 1px solid #8884; padding: .8rem 0; }
.row { display: flex; flex-wrap: wrap; gap: .8rem; align-items: flex-start; }
figure { margin: 0; width: 172px; padding: 5px; border: 2px solid transparent; border-radius: 6px; }
figure.kept { border-color: var(--ok); }
.thumb { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
  background: #8882; }
.thumb img { max-width: 160px; max-height: 160px; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 .35rem; border-radius: 3px; background: #8883;
  font-weight: 600; }
.badge.kept { background: var(--ok); color: #fff; }
.name { font-weight: 600; display: block; }
.path { display: block; }
.missing { font-size: 12px; padding: .3rem; text-align: center; }
"""


def _load_image(path: str, draft_size: int):
    """Decode ``path`` to an RGB Pillow image through the project's one decoder."""
    from pixdex.images import load_image

    return load_image(path, draft_size)[0]


def thumbnail_data_uri(path: str, size: int = THUMB_PX) -> str:
    """A ``data:image/jpeg;base64,...`` thumbnail of ``path`` (long side ``size``); raises the
    decoder's error (``DecodeError``) or ``OSError`` when the file cannot be read."""
    return _jpeg_data_uri(_load_image(path, size), size)


def thumbnail_data_uri_of_bytes(data: bytes, size: int = THUMB_PX, name: str = "") -> str:
    """:func:`thumbnail_data_uri` of an encoded image held in memory (a webdataset member, a parquet cell)."""
    from pixdex.images import decode

    return _jpeg_data_uri(decode(data, size, name=name)[0], size)


def _jpeg_data_uri(im, size: int) -> str:
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _thumb_or_reason(path: str, size: int) -> tuple[str | None, str | None]:
    from pixdex.images import DecodeError

    try:
        return thumbnail_data_uri(path, size), None
    except (DecodeError, OSError, ValueError) as e:
        log.debug("no thumbnail for %s: %s", path, e)
        return None, str(e) or type(e).__name__


def content_security_policy(css: str = _CSS) -> str:
    """The page's CSP: nothing but ``data:`` images and the one ``<style>`` block ``css`` (by its hash)."""
    digest = base64.b64encode(hashlib.sha256(css.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; img-src data:; "
        f"style-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


def escape(s) -> str:
    """Text for HTML content and attribute values (quotes escaped too)."""
    return html.escape(str(s), quote=True)


def _score_label(m: Member) -> str:
    label = {"copy": "distance ", "semantic": "cosine "}.get(m.tier or "")
    return label + score_text(m) if label and m.score is not None else ""


def _figure(m: Member, kept: bool, thumb: str | None, reason: str | None) -> str:
    shown = display_path(m.path)
    name = os.path.basename(shown) or shown
    folder = os.path.dirname(shown)
    if thumb is not None:
        img = f'<img src="{thumb}" alt="{escape(name)}">'
    else:
        img = f'<span class="missing">no thumbnail: {escape(reason or "unreadable")}</span>'
    badge = (
        '<span class="badge kept">KEPT</span>'
        if kept
        else f'<span class="badge tier">{escape(m.tier or "?")}</span> <span class="score">{escape(_score_label(m))}</span>'
    )
    res = f"{m.width}&times;{m.height}" if m.width and m.height else "?&times;?"
    fmt = f" {escape(m.format)}" if m.format else ""
    return (
        f'<figure class="member{" kept" if kept else ""}" data-id="{escape(m.id)}" title="{escape(shown)}">'
        f'<div class="thumb">{img}</div><figcaption>{badge}<br>'
        f'<span class="res">{res}</span> &middot; <span class="bytes">{escape(human_bytes(m.bytes))}</span>{fmt}'
        f'<span class="name">{escape(name)}</span><span class="path">{escape(folder)}</span>'
        "</figcaption></figure>"
    )


def _group_html(number: int, g: Group, thumbs: list[tuple[str | None, str | None]], max_members: int) -> str:
    members = g.members[:max_members]
    tier = g.best_tier()
    parts = [
        f'<section class="group" id="g{number}" data-members="{len(g.members)}">'
        f'<h2>Group {number} <span class="meta">&middot; {len(g.members)} images'
        + (f" &middot; {escape(tier)}" if tier else "")
        + '</span></h2><div class="row">'
    ]
    for m, (thumb, reason) in zip(members, thumbs):
        parts.append(_figure(m, m is g.keep, thumb, reason))
    parts.append("</div>")
    if len(g.members) > len(members):
        parts.append(f'<p class="note">{len(g.members) - len(members):,} more members not shown.</p>')
    parts.append("</section>\n")
    return "".join(parts)


def _thumbnailed(
    groups: list[Group], max_members: int, size: int, workers: int
) -> Iterator[tuple[Group, list[tuple[str | None, str | None]]]]:
    """Groups with their thumbnails, made in parallel a few groups at a time (bounded memory)."""
    chunk = 16
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(groups), chunk):
            part = groups[start : start + chunk]
            paths = [m.path for g in part for m in g.members[:max_members]]
            results = list(pool.map(lambda p: _thumb_or_reason(p, size), paths))
            i = 0
            for g in part:
                n = min(len(g.members), max_members)
                yield g, results[i : i + n]
                i += n


def write_html(
    report: Report,
    path: str | Path,
    *,
    max_groups: int = HTML_MAX_GROUPS,
    max_members: int = HTML_MAX_MEMBERS,
    max_thumbnails: int = HTML_MAX_THUMBNAILS,
    thumb_px: int = THUMB_PX,
    workers: int | None = None,
    title: str = "pixdex dedup report",
) -> dict:
    """Write the page to ``path`` (atomically). Returns ``{"groups_shown", "groups_left_out",
    "thumbnails", "thumbnails_failed"}``."""
    groups = report.groups
    n_shown = budget = 0
    for g in groups[: max(0, max_groups)]:
        budget += min(len(g.members), max_members)
        if n_shown and budget > max_thumbnails:
            break
        n_shown += 1
    shown = groups[:n_shown]
    left_out = len(groups) - len(shown)
    workers = workers or min(8, os.cpu_count() or 1)
    made = failed = 0
    with atomic_text(path) as f:
        f.write(
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{escape(content_security_policy())}">\n'
            '<meta name="referrer" content="no-referrer">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(title)}</title>\n<style>{_CSS}</style>\n</head><body>\n"
            f'<header><h1>{escape(title)}</h1><p class="summary">{escape(summary_line(report.summary))}</p>'
            '<p class="note">Green frame: the copy kept. Tier and score describe each link to it '
            "(copy: Hamming distance, lower is closer; semantic: cosine, higher is closer).</p>"
        )
        if left_out:
            f.write(
                f'<p class="note left-out">{left_out:,} more groups not shown here (the page shows the '
                f"first {len(shown):,}); the JSON and CSV outputs list them all.</p>"
            )
        f.write("</header>\n<main>\n")
        for number, (g, thumbs) in enumerate(_thumbnailed(shown, max_members, thumb_px, workers), start=1):
            made += sum(t is not None for t, _ in thumbs)
            failed += sum(t is None for t, _ in thumbs)
            f.write(_group_html(number, g, thumbs, max_members))
        f.write("</main>\n</body></html>\n")
    return {
        "groups_shown": len(shown),
        "groups_left_out": left_out,
        "thumbnails": made,
        "thumbnails_failed": failed,
    }
