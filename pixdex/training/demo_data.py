"""A deterministic, captioned synthetic image set: coloured shapes on plain backgrounds.

Each image holds 1 to 3 objects; an object is a colour x shape x size, placed in its own cell of a
4 x 4 grid (with a little jitter, always inside its cell). At the bundled ``pixdex-demo`` model's 64-px
input a cell is one 16-px ViT patch, so a tiny model trained on CPU within minutes can bind colour to
shape; positions are named on a 3 x 3 scale ("top left", "top", ..., "center", ...).

Every image has several captions, like COCO: the first says what is where in plain English, e.g.
``"a small red circle above a large green square on a white background"`` (size, background and
position may be left out); the others each name one object of the image (``"a red circle"``,
``"a large green square in the top left corner"``), and for three objects also two of them. So short
queries such as "a red circle" are trained to find every image that holds one, not only images of a
lone red circle. ``pixdex train`` reads rows sharing an image as alternative captions and samples one
per image per epoch. Image ``i`` depends only on ``(seed, i)``: the same seed gives identical bytes, another
seed gives other images, and a smaller ``n`` is a prefix of a larger one.

Output folder::

    manifest.csv     one row per caption: image (relative path), caption, background, objects ("small red
                     circle @ top left; large green square @ center"); an image's first row is its full caption
    objects.json     {"generator": ..., "seed", "image_size", "images": [{"image", "caption" (the full one),
                     "captions" (all), "background",
                     "objects": [{"colour", "shape", "size", "position", "cell", "x", "y", "radius"}]}]}
    img_00000.png ...

The bundled ``pixdex-demo`` model is trained on such a set; see ``pixdex.training.trainer`` for the
exact command.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pixdex.errors import PixdexError
from pixdex.fsutil import atomic_write

log = logging.getLogger(__name__)

GENERATOR = "pixdex demo-data v6"

COLOURS = {
    "red": (220, 30, 35),
    "orange": (250, 140, 10),
    "yellow": (240, 215, 25),
    "green": (35, 165, 60),
    "blue": (35, 80, 225),
    "purple": (135, 45, 180),
    "pink": (250, 120, 185),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
SIZES = {"small": 0.09, "large": 0.115}  # radius as a fraction of the image side (a cell is 0.25)
BACKGROUNDS = {"white": (246, 246, 246), "gray": (128, 128, 128), "black": (18, 18, 18)}
GRID = 4
_ROW_WORD = ("top", "", "", "bottom")
_COL_WORD = ("left", "", "", "right")
PLACE_PHRASES = {
    "top left": "in the top left corner",
    "top": "at the top",
    "top right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
OBJECT_COUNT_P = (0.4, 0.35, 0.25)  # 1, 2 or 3 objects
MENTION_PLACE_P = 0.3  # an object-mention caption says where the object is
MENTION_BG_P = 0.3  # ... or on which background
SAME_COLOUR_P = 0.35  # of images with several objects: two of them share a colour
SUPERSAMPLE = 4
DEFAULT_IMAGE_SIZE = 128  # thumbnails look fine; models resize (pixdex-demo works at 64)


@dataclass(frozen=True)
class DemoObject:
    colour: str
    shape: str
    size: str
    row: int
    col: int
    x: float  # centre, as a fraction of the side
    y: float
    radius: float  # fraction of the side

    @property
    def position(self) -> str:
        """The cell on a 3 x 3 scale: ``"top left"``, ``"top"``, ..., ``"center"``, ..."""
        return " ".join(w for w in (_ROW_WORD[self.row], _COL_WORD[self.col]) if w) or "center"

    def phrase(self, with_size: bool) -> str:
        """``"a small red circle"`` / ``"an orange star"``."""
        words = f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"
        return ("an " if words[0] in "aeiou" else "a ") + words

    def to_dict(self) -> dict:
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "position": self.position,
            "cell": [self.row, self.col],
            "x": round(self.x, 4),
            "y": round(self.y, 4),
            "radius": round(self.radius, 4),
        }


def generate(out_dir, n: int = 1000, seed: int = 0, image_size: int = DEFAULT_IMAGE_SIZE) -> Path:
    """Write ``n`` images, ``manifest.csv`` and ``objects.json`` into ``out_dir``; return the manifest path.

    Refuses a non-empty folder that is not an earlier demo set (nothing of the user's is overwritten).
    """
    out = Path(out_dir).expanduser()
    if n < 1:
        raise PixdexError(f"--n must be at least 1, got {n}")
    if image_size < 32:
        raise PixdexError(f"--image-size must be at least 32 pixels, got {image_size}")
    old_images = _check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"img_{i:05d}.png" for i in range(n)]
    records = []
    for i, name in enumerate(names):
        rng = np.random.default_rng([seed, i])
        background, objects = sample_scene(rng)
        captions = make_captions(rng, background, objects)
        img = render(background, objects, image_size, rng)
        img.save(out / name, format="PNG", optimize=False)
        records.append(
            {
                "image": name,
                "caption": captions[0],
                "captions": captions,
                "background": background,
                "objects": [o.to_dict() for o in objects],
            }
        )
    for stale in sorted(set(old_images) - set(names)):
        # only files an earlier demo set listed, inside this folder
        path = out / Path(stale).name
        if path.is_file():
            path.unlink()
    manifest = out / "manifest.csv"
    atomic_write(manifest, _manifest_text(records))
    meta = {
        "generator": GENERATOR,
        "seed": seed,
        "image_size": image_size,
        "n": n,
        "colours": list(COLOURS),
        "shapes": list(SHAPES),
        "sizes": list(SIZES),
        "backgrounds": list(BACKGROUNDS),
        "images": records,
    }
    atomic_write(out / "objects.json", json.dumps(meta, indent=1) + "\n")
    log.info("wrote %d demo images to %s", n, out)
    return manifest


def load_annotations(folder) -> dict:
    """The ``objects.json`` of a demo set (ground truth for evaluations)."""
    path = Path(folder) / "objects.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PixdexError(f"{path}: not a pixdex demo set ({e})") from e
    if meta.get("generator") != GENERATOR:
        raise PixdexError(f"{path}: not written by {GENERATOR}")
    return meta


def sample_scene(rng: np.random.Generator) -> tuple[str, list[DemoObject]]:
    """A background and 1-3 objects with distinct (colour, shape) pairs in distinct grid cells."""
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    count = int(rng.choice(len(OBJECT_COUNT_P), p=OBJECT_COUNT_P)) + 1
    cells = rng.permutation(GRID * GRID)[:count]
    n_shapes = len(SHAPES)
    pairs = [int(p) for p in rng.permutation(len(COLOURS) * n_shapes)[:count]]
    if count >= 2 and rng.random() < SAME_COLOUR_P:
        # the second object shares the first one's colour: only the shapes tell such captions apart
        base = pairs[0] // n_shapes * n_shapes
        free = [base + k for k in range(n_shapes) if base + k not in pairs]
        pairs[1] = free[int(rng.integers(len(free)))]
    objects = []
    for cell, pair in zip(cells, pairs):
        row, col = divmod(int(cell), GRID)
        colour = list(COLOURS)[pair // n_shapes]
        shape = SHAPES[pair % n_shapes]
        size = list(SIZES)[rng.integers(len(SIZES))]
        radius = SIZES[size] * (1 + rng.uniform(-0.04, 0.04))
        slack = max(0.0, 0.5 / GRID - radius - 0.004)  # keep the shape inside its cell
        x = (col + 0.5) / GRID + rng.uniform(-slack, slack)
        y = (row + 0.5) / GRID + rng.uniform(-slack, slack)
        objects.append(DemoObject(colour, shape, size, row, col, x, y, radius))
    return background, objects


def relation(a: DemoObject, b: DemoObject) -> str:
    """Where ``a`` is relative to ``b``: above, below, to the left of, to the right of."""
    dx, dy = a.x - b.x, a.y - b.y
    if abs(dy) >= abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def make_captions(rng: np.random.Generator, background: str, objects: Sequence[DemoObject]) -> list[str]:
    """The full caption, then one caption per object (and, for three objects, one naming two of them)."""
    captions = [make_caption(rng, background, objects)]
    if len(objects) > 1:
        captions += [_mention(rng, background, [o]) for o in objects]
    else:  # a lone object: a second, differently worded caption
        captions.append(_mention(rng, background, objects))
    if len(objects) == 3:
        pair = [objects[int(k)] for k in rng.permutation(3)[:2]]
        captions.append(_mention(rng, background, pair))
    return captions


def make_caption(rng: np.random.Generator, background: str, objects: Sequence[DemoObject]) -> str:
    """Every object, in a random order; two objects often by their relation ("above", "to the left of")."""
    with_size = bool(rng.random() < 0.5)
    with_bg = bool(rng.random() < 0.4)
    order = [objects[int(k)] for k in rng.permutation(len(objects))]
    phrases = [o.phrase(with_size) for o in order]
    placed = False
    if len(order) == 1:
        text = phrases[0]
        if rng.random() < 0.3:
            text += " " + PLACE_PHRASES[order[0].position]
            placed = True
    elif len(order) == 2:
        if rng.random() < 0.7:
            text = f"{phrases[0]} {relation(order[0], order[1])} {phrases[1]}"
        else:
            text = f"{phrases[0]} and {phrases[1]}"
    else:
        text = ", ".join(phrases[:-1]) + f" and {phrases[-1]}"
    if with_bg:
        text += f" against a {background} background" if placed else f" on a {background} background"
    return text


def _mention(rng: np.random.Generator, background: str, objects: Sequence[DemoObject]) -> str:
    """Some objects of an image, each with or without its size; one alone may get its place."""
    with_size = bool(rng.random() < 0.4)
    text = " and ".join(o.phrase(with_size) for o in objects)
    placed = len(objects) == 1 and rng.random() < MENTION_PLACE_P
    if placed:
        text += " " + PLACE_PHRASES[objects[0].position]
    if rng.random() < MENTION_BG_P:
        text += f" against a {background} background" if placed else f" on a {background} background"
    return text


def render(
    background: str, objects: Sequence[DemoObject], size: int, rng: np.random.Generator
) -> Image.Image:
    """Draw at ``SUPERSAMPLE`` x and downsample, for smooth edges; colours jitter slightly."""
    big = size * SUPERSAMPLE
    bg = _jitter(BACKGROUNDS[background], rng, 8)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for o in objects:
        fill = _jitter(COLOURS[o.colour], rng, 14)
        cx, cy, r = o.x * big, o.y * big, o.radius * big
        _draw_shape(draw, o.shape, cx, cy, r, fill)
    return img.resize((size, size), Image.Resampling.BOX)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        h = r * 0.92
        draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == "triangle":
        pts = [
            (cx + r * math.cos(a), cy + 0.12 * r + r * math.sin(a))
            for a in (-math.pi / 2, -math.pi / 2 + 2 * math.pi / 3, -math.pi / 2 + 4 * math.pi / 3)
        ]
        draw.polygon(pts, fill=fill)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r * (1.0 if k % 2 == 0 else 0.45)
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.05 * r + rad * math.sin(a)))
        draw.polygon(pts, fill=fill)
    elif shape == "cross":
        t = r * 0.34
        draw.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fill)
        draw.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fill)
    else:  # pragma: no cover - SHAPES is closed
        raise ValueError(shape)


def _jitter(rgb, rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    d = rng.integers(-amount, amount + 1, size=3)
    return tuple(int(np.clip(c + e, 0, 255)) for c, e in zip(rgb, d))


def _manifest_text(records) -> str:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", "caption", "background", "objects"])
    for r in records:
        objs = "; ".join(f"{o['size']} {o['colour']} {o['shape']} @ {o['position']}" for o in r["objects"])
        for caption in r["captions"]:
            w.writerow([r["image"], caption, r["background"], objs])
    return buf.getvalue()


def _check_out_dir(out: Path) -> list[str]:
    """Image names of an earlier demo set in ``out`` (to replace), or [] for a new/empty folder."""
    if out.exists() and not out.is_dir():
        raise PixdexError(f"{out} exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return []
    try:
        meta = json.loads((out / "objects.json").read_text())
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("generator") != GENERATOR:
        raise PixdexError(f"{out} is not empty and holds no earlier demo set; choose a new or empty folder")
    return [r.get("image", "") for r in meta.get("images", []) if isinstance(r, dict)]
