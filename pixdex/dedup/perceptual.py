"""Perceptual hashes for the copy tier, with their 8 dihedral variants (rotations and mirrors).

Two algorithms, measured against each other by ``bench/dedup_quality.py``:

- ``pdq``: Meta's PDQ through the ``pdqhash`` package, 256 bits (32 bytes);
- ``phash``: the DCT pHash of ``imagehash`` (32x32 grey thumbnail, 8x8 low frequencies against their
  median), 64 bits (8 bytes).

A hash is ``bytes`` (``np.packbits`` of the bits, row-major, most significant bit first; for pHash that
is ``imagehash``'s hex string read as bytes). The 8 dihedral variants are always in the order of
``DIHEDRAL``: identity, rotate 90, rotate 180, rotate 270 (counter-clockwise, as Pillow's
``Transpose.ROTATE_*``), mirror left-right, flip top-bottom, transpose, transverse; ``[0]`` is the
image's own (canonical) hash. Variant ``g`` of image A is (close to) the hash of ``g(A)``, so a copy B
of ``g(A)`` is found by comparing A's variants against B's canonical hash.

Images are hashed as decoded (RGB). PDQ is given the image already resized to its 64 x 64 working grid
(Lanczos, symmetric): then PDQ's own tent filter and decimation do nothing, its 8 dihedral hashes
(computed from one DCT) equal the hashes of the really rotated/mirrored image (up to a few bits whose
coefficient ties with the median), a downscaled copy hashes
like its original, and a 12 MP image costs what a 500 px one does. This is PDQ's algorithm with
Pillow's resampling instead of PDQ's Jarosz filter, so hashes are not bit-identical to ThreatExchange's
reference hasher (``bench/dedup_quality.py`` measured the reference path too: mirror recall 0.88 vs
1.00 at D=31). pHash is imagehash's (its 32 x 32 Lanczos thumbnail; equal bits for images up to 256
px, where no box pre-reduction happens).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from PIL import Image

from pixdex.errors import PixdexError

ALGORITHMS = ("pdq", "phash")
NBITS = {"pdq": 256, "phash": 64}
NBYTES = {k: v // 8 for k, v in NBITS.items()}
DIHEDRAL = (
    "identity",
    "rotate_90",
    "rotate_180",
    "rotate_270",
    "mirror",
    "flip_vertical",
    "transpose",
    "transverse",
)

# Chosen by bench/dedup_quality.py (see ARCHITECTURE.md, copy tier): the hash stored at index time
# and the Hamming distance at or under which two images are copies.
DEFAULT_ALGORITHM = "pdq"
DEFAULT_DISTANCE = {"pdq": 31, "phash": 6}

# What the indexer stores per image (table copy_hashes, see ARCHITECTURE.md "copy tier"): PDQ of the
# image decoded at draft HASH_DRAFT, whatever the store's model decodes at (so hashes compare across
# stores), as COPY_ROWS rows of 32 bytes: the 8 dihedral hashes (DIHEDRAL order), then one hash per
# sub-window of WINDOWS (canonical orientation). A change of any of these needs a new COPY_VERSION:
# the indexer's backfill pass then recomputes the stored hashes.
COPY_VERSION = 2  # 2: copy_hash_array also returns the PDQ quality (stored next to the hashes)
HASH_DRAFT = 256
# PDQ's quality (0-100, its gradient sum over the 64 x 64 luma grid, as pdqhash computes it): an image
# under MIN_QUALITY takes no part in the copy tier. Near-flat images (a lone shape on a flat background,
# sky, a blank scan) have near-random PDQ bits, so two different ones fall within the copy distance.
# 50 is PDQ's reference cut ("do not trust the hash"); measured (ARCHITECTURE.md, copy tier): every one
# of the 71 links among 300 distinct demo-data images is between images of quality <= 39, while 29 of
# the 31 shared photos are at 56 or more (the 2 others are featureless sky, 9 and 11).
MIN_QUALITY = 50
# Crop windows: (side fraction, x anchor, y anchor), anchors in 0..1 (0: left/top edge, 1: right/bottom).
# A copy cropped to about one of these windows hashes like the window (bench/dedup_quality.py, crops).
WINDOW_SIDES = (0.98, 0.96, 0.94, 0.92)
WINDOW_ANCHORS = (0.0, 0.5, 1.0)
WINDOWS: tuple[tuple[float, float, float], ...] = tuple(
    (f, x, y) for f in WINDOW_SIDES for y in WINDOW_ANCHORS for x in WINDOW_ANCHORS
)
COPY_ROWS = len(DIHEDRAL) + len(WINDOWS)
FIRST_WINDOW = len(DIHEDRAL)  # stored rows [FIRST_WINDOW:] are the window hashes, in WINDOWS order
COPY_NBYTES = 32

_PDQ_GRID = 64  # PDQ's own working resolution: given 64 x 64, its filter and decimation are the identity
# pdqhash's variant order: identity, rot 90, rot 180, rot 270, flip top-bottom, mirror, transpose, transverse
_PDQ_ORDER = [0, 1, 2, 3, 5, 4, 6, 7]
_PHASH_SIZE = 8
_PHASH_THUMB = 32  # imagehash's hash_size * highfreq_factor


def _check(algorithm: str) -> None:
    if algorithm not in ALGORITHMS:
        raise PixdexError(f"unknown perceptual hash {algorithm!r}; choose one of: {', '.join(ALGORITHMS)}")


def _grid(img: Image.Image, side: int, mode: str, gap: float) -> Image.Image:
    """``img`` squashed to ``side`` x ``side`` (both hashes ignore the aspect ratio) with a Lanczos
    filter; an image over ``2 * gap * side`` is first box-reduced by an integer factor for speed."""
    if img.mode != mode:
        img = img.convert(mode)
    g = gap if max(img.size) > 2 * gap * side else None
    return img.resize((side, side), Image.Resampling.LANCZOS, reducing_gap=g)


# ---------------------------------------------------------------------- PDQ


def _pdq(img: Image.Image) -> tuple[np.ndarray, int]:
    """((8, 256) 0/1 bits of the 8 dihedral PDQ hashes in DIHEDRAL order, PDQ's quality 0-100)."""
    import pdqhash

    a = np.ascontiguousarray(np.asarray(_grid(img, _PDQ_GRID, "RGB", 2.0), dtype=np.uint8))
    hashes, quality = pdqhash.compute_dihedral(a)
    return np.asarray(hashes, dtype=np.uint8).reshape(8, 256)[_PDQ_ORDER], int(quality)


def _pdq_bits(img: Image.Image) -> np.ndarray:
    """(8, 256) 0/1 bits of the 8 dihedral PDQ hashes, in DIHEDRAL order."""
    return _pdq(img)[0]


# Window hashes: PDQ's DCT computed with matrices, so that all windows cost one small matrix product
# each. The image (squashed to _WIN_GRID^2, Lanczos, on Pillow's luma L = PDQ's 0.299 R + 0.587 G + 0.114 B) is
# resampled to PDQ's 64 x 64 grid over the window by a triangle filter, then PDQ's 16 x 16 DCT and
# median threshold; bit order as pdqhash. For the whole image this is PDQ's hash up to a few bits (the
# tests check it), so a window of A compares with the canonical hash of a crop B of A.
_WIN_GRID = 128
_window_mats: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _resample_matrix(lo: float, hi: float, n_out: int = _PDQ_GRID, n_in: int = _WIN_GRID) -> np.ndarray:
    """(n_out, n_in) triangle-filter weights resampling source span [lo, hi) (pixels) to n_out samples."""
    step = (hi - lo) / n_out
    support = max(step, 1.0)
    centres = lo + (np.arange(n_out) + 0.5) * step
    x = np.arange(n_in) + 0.5
    w = np.clip(1.0 - np.abs(x[None, :] - centres[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def _pdq_dct() -> np.ndarray:
    i = np.arange(1, 17)[:, None]  # PDQ keeps frequencies 1..16 of its 64-point DCT
    j = np.arange(_PDQ_GRID)[None, :]
    return np.sqrt(2.0 / _PDQ_GRID) * np.cos(np.pi / (2 * _PDQ_GRID) * i * (2 * j + 1))


def _matrices(windows: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(rows (W, 16, G), cols (W, 16, G)): DCT @ resampling for each window (cached; not at import)."""
    got = _window_mats.get(windows)
    if got is None:
        dct = _pdq_dct()
        span = lambda f, a: (_WIN_GRID * (1 - f) * a, _WIN_GRID * ((1 - f) * a + f))  # noqa: E731
        rows = np.stack([dct @ _resample_matrix(*span(f, y)) for f, _, y in windows]).astype(np.float32)
        cols = np.stack([dct @ _resample_matrix(*span(f, x)) for f, x, _ in windows]).astype(np.float32)
        got = _window_mats[windows] = (rows, cols)
    return got


def window_bits(img: Image.Image, windows: tuple = WINDOWS) -> np.ndarray:
    """(len(windows), 256) 0/1: the PDQ hash of each window of the image (canonical orientation)."""
    if not windows:
        return np.zeros((0, 256), dtype=np.uint8)
    rows, cols = _matrices(tuple(windows))
    g = np.asarray(_grid(img.convert("L"), _WIN_GRID, "L", 2.0), dtype=np.float32)
    coef = (rows @ g) @ cols.transpose(0, 2, 1)  # (W, 16, 16)
    flat = coef.reshape(len(windows), -1)
    bits = flat > np.median(flat, axis=1, keepdims=True)
    return bits[:, ::-1].astype(np.uint8)  # pdqhash's bit order


class CopyHash(NamedTuple):
    """What the indexer stores per image for the copy tier (see :func:`copy_hash_array`)."""

    rows: np.ndarray  # (COPY_ROWS, 32) uint8
    quality: int  # PDQ's quality of the canonical hash, 0-100 (trusted from MIN_QUALITY)


def copy_hash_array(img: Image.Image) -> CopyHash:
    """(rows, quality): what the indexer stores for an image decoded at ``HASH_DRAFT``: (COPY_ROWS, 32)
    uint8, the 8 dihedral PDQ hashes then the PDQ hash of each of ``WINDOWS``; and PDQ's quality of
    the image (computed with the hashes, at no extra cost)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    bits, quality = _pdq(rgb)
    return CopyHash(np.packbits(np.concatenate([bits, window_bits(rgb)]), axis=1), quality)


def trusted(quality: np.ndarray) -> np.ndarray:
    """Which of these PDQ qualities may take part in the copy tier (``quality >= MIN_QUALITY``)."""
    return np.asarray(quality) >= MIN_QUALITY


# ---------------------------------------------------------------------- pHash


def _dct_matrix(n: int) -> np.ndarray:
    """The unnormalised DCT-II matrix of scipy.fftpack.dct (type 2, norm=None): 2 cos(pi k (2i+1) / 2n)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


def _dihedral_arrays(a: np.ndarray) -> list[np.ndarray]:
    """The 8 dihedral images of a 2-D array, in DIHEDRAL order (Pillow's meaning of each name)."""
    return [
        a,
        np.rot90(a, 1),  # Transpose.ROTATE_90 is counter-clockwise, as np.rot90
        np.rot90(a, 2),
        np.rot90(a, 3),
        a[:, ::-1],
        a[::-1, :],
        a.T,
        a[::-1, ::-1].T,
    ]


def _phash_bits(img: Image.Image) -> np.ndarray:
    """(8, 64) bits: imagehash.phash of the image and of its 7 dihedral transforms of the thumbnail."""
    px = np.asarray(_grid(img, _PHASH_THUMB, "L", 4.0), dtype=np.float64)
    m = _dct_matrix(_PHASH_THUMB)[:_PHASH_SIZE]
    out = np.empty((8, _PHASH_SIZE * _PHASH_SIZE), dtype=np.uint8)
    for g, a in enumerate(_dihedral_arrays(px)):
        low = m @ a @ m.T  # == scipy.fftpack.dct(dct(a, axis=0), axis=1)[:8, :8]
        out[g] = (low > np.median(low)).ravel()
    return out


# ---------------------------------------------------------------------- public


def dihedral_bits(img: Image.Image, algorithm: str = DEFAULT_ALGORITHM) -> np.ndarray:
    """(8, nbits) uint8 0/1: the image's hash and its 7 dihedral variants, in DIHEDRAL order."""
    _check(algorithm)
    return _pdq_bits(img) if algorithm == "pdq" else _phash_bits(img)


def dihedral_array(img: Image.Image, algorithm: str = DEFAULT_ALGORITHM) -> np.ndarray:
    """(8, nbytes) uint8 packed hashes, DIHEDRAL order; row 0 is the canonical hash."""
    return np.packbits(dihedral_bits(img, algorithm), axis=1)


def dihedral_hashes(img: Image.Image, algorithm: str = DEFAULT_ALGORITHM) -> list[bytes]:
    """The 8 dihedral hashes as bytes; ``[0] == hash_image(img)``. One call costs about one hash."""
    return [r.tobytes() for r in dihedral_array(img, algorithm)]


def hash_image(img: Image.Image, algorithm: str = DEFAULT_ALGORITHM) -> bytes:
    """The canonical perceptual hash of a decoded image (32 bytes for PDQ, 8 for pHash)."""
    return dihedral_hashes(img, algorithm)[0]


def to_array(hashes, nbytes: int | None = None) -> np.ndarray:
    """A list of equal-length ``bytes`` (or of lists of them: dihedral sets) -> uint8 array (..., nbytes)."""
    if isinstance(hashes, np.ndarray):
        return np.ascontiguousarray(hashes, dtype=np.uint8)
    if len(hashes) == 0:
        return np.zeros((0, nbytes or 0), dtype=np.uint8)
    if isinstance(hashes[0], (bytes, bytearray, memoryview)):
        a = np.frombuffer(b"".join(bytes(h) for h in hashes), dtype=np.uint8)
        return a.reshape(len(hashes), -1).copy()
    return np.stack([to_array(h) for h in hashes])


def hamming(a: bytes, b: bytes) -> int:
    """Hamming distance between two hashes of the same length."""
    if len(a) != len(b):
        raise ValueError(f"hashes of different lengths ({len(a)} and {len(b)} bytes)")
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_count()
