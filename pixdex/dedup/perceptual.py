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
COPY_VERSION = 1
HASH_DRAFT = 256
WINDOWS: tuple[tuple[float, float, float], ...] = ()  # (side fraction, x anchor, y anchor) in 0..1
COPY_ROWS = len(DIHEDRAL) + len(WINDOWS)
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


def _pdq_bits(img: Image.Image) -> np.ndarray:
    """(8, 256) 0/1 bits of the 8 dihedral PDQ hashes, in DIHEDRAL order."""
    import pdqhash

    a = np.ascontiguousarray(np.asarray(_grid(img, _PDQ_GRID, "RGB", 2.0), dtype=np.uint8))
    hashes, _quality = pdqhash.compute_dihedral(a)
    return np.asarray(hashes, dtype=np.uint8).reshape(8, 256)[_PDQ_ORDER]


def _window(img: Image.Image, side: float, ax: float, ay: float) -> Image.Image:
    w, h = img.size
    kw, kh = max(1, round(w * side)), max(1, round(h * side))
    x0, y0 = round((w - kw) * ax), round((h - kh) * ay)
    return img.crop((x0, y0, x0 + kw, y0 + kh))


def _pdq_single(img: Image.Image) -> np.ndarray:
    """(256,) 0/1 bits: the canonical PDQ hash only (cheaper than the dihedral set)."""
    import pdqhash

    a = np.ascontiguousarray(np.asarray(_grid(img, _PDQ_GRID, "RGB", 2.0), dtype=np.uint8))
    h, _quality = pdqhash.compute(a)
    return np.asarray(h, dtype=np.uint8).reshape(256)


def copy_hash_array(img: Image.Image) -> np.ndarray:
    """(COPY_ROWS, 32) uint8: what the indexer stores for an image decoded at ``HASH_DRAFT``: the 8
    dihedral PDQ hashes, then the PDQ hash of each of ``WINDOWS``."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    bits = [_pdq_bits(rgb)]
    if WINDOWS:
        bits.append(np.stack([_pdq_single(_window(rgb, *w)) for w in WINDOWS]))
    return np.packbits(np.concatenate(bits), axis=1)


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
