"""The store contract: every name storage writes and search reads, in one place.

A store is a folder holding ``pixdex.db`` (SQLite: rows and float32 vectors, the source of truth),
``index.faiss`` (derived from the vectors), ``store.json`` (sidecar: model identity, FAISS description),
``index.lock`` (held by the one indexer) and the exported text tower (``text_tower.safetensors`` +
``text_tower.json``) for torch-free text queries.

The ORM (:mod:`pixdex.storage.schema`), the migrations' DDL (:mod:`pixdex.storage.migrations`), the
torch- and SQLAlchemy-free reader (:mod:`pixdex.search.store_view`), the text-tower export, tests and
benchmarks all take these names from here; a test checks that the ORM and the migrated database agree
with them. Existing stores use these names, so renaming one needs a migration, not just an edit.

Plain constants and pure functions only: no imports beyond the standard library, no work at import time.
"""

from __future__ import annotations

from typing import Optional

from pixdex.paths import pixdex_command

# ---------------------------------------------------------------------- files in a store folder

DB_FILE = "pixdex.db"
SIDECAR_FILE = "store.json"
FAISS_FILE = "index.faiss"
LOCK_FILE = "index.lock"
TEXT_TOWER_FILE = "text_tower.safetensors"
TEXT_TOWER_META = "text_tower.json"

# A Ray run's shards waiting for the one writer (pixdex.scale.shards): pixdex's own files, deleted once
# ingested; scans skip the store folder, so they are never indexed.
STAGING_DIR = "staging"

SIDECAR_FORMAT = 1  # store.json "format"
TEXT_TOWER_FORMAT = 1  # text_tower.json "format"

# ---------------------------------------------------------------------- tables and columns

# images: one row per file found under an indexed root; ``id`` is the FAISS id, never reused.
T_IMAGES = "images"
C_ID = "id"
C_PATH = "path"  # absolute path, unique
C_ROOT = "root"  # the indexed root folder the file was found under
C_SIZE = "size"  # bytes
C_MTIME_NS = "mtime_ns"
C_CONTENT_HASH = "content_hash"  # blake2b-128 hex of the bytes
C_WIDTH = "width"  # after EXIF orientation
C_HEIGHT = "height"
C_FORMAT = "format"  # Pillow format: JPEG, PNG, HEIF, ...
C_TAKEN = "taken_at"  # EXIF DateTimeOriginal as 'YYYY-MM-DD HH:MM:SS' (local time) or NULL
C_CAMERA_MAKE = "camera_make"
C_CAMERA_MODEL = "camera_model"
C_STATUS = "status"  # STATUS_OK | STATUS_FAILED
C_ERROR = "error"  # why it failed (one line)
C_INDEXED_AT = "indexed_at"  # unix time of the last write

# vectors: the embedding of each STATUS_OK image (float32 little-endian, L2-normalised), written in the
# same transaction as its images row; a table of its own so that scans of images never read blobs.
T_VECTORS = "vectors"
C_VEC_ID = "image_id"  # -> images.id
C_VEC = "vector"

# copy_hashes: the perceptual hashes of each STATUS_OK image for the copy tier of ``pixdex dedup``
# (layout and version: ``pixdex.dedup.perceptual.COPY_LAYOUT`` / ``COPY_VERSION``), written in the same
# transaction as the image row, or later by the indexer's backfill pass for rows made before it existed.
# ``pdq`` NULL marks a row whose file could not be decoded for hashing (not retried; a changed file
# gets a new row). Rows of another ``version`` are recomputed by the backfill pass. ``quality``: PDQ's
# quality of the image (0-100; migration m005_copy_quality); under ``perceptual.MIN_QUALITY`` the
# image takes no part in the copy tier.
T_COPY_HASHES = "copy_hashes"
C_COPY_ID = "image_id"  # -> images.id
C_COPY_VERSION = "version"
C_COPY_PDQ = "pdq"
C_COPY_QUALITY = "quality"

# tags: zero-shot labels of STATUS_OK images (``pixdex tag``): the top labels of one label set, each with
# its probability; the whole table belongs to the label set recorded in meta ``tags`` (another label set,
# template set or model replaces it). ``label`` compares case-insensitively (COLLATE NOCASE).
T_TAGS = "tags"
C_TAG_ID = "image_id"  # -> images.id (ON DELETE CASCADE)
C_TAG_LABEL = "label"
C_TAG_PROB = "prob"
C_TAG_SET = "label_set"  # pixdex.tags.labelsets.label_set_id of labels + templates + model
IX_TAGS_LABEL = "ix_tags_label"
TAG_CLASSES_FILE = "tag_classes.safetensors"  # cached class embeddings of the current label set

# meta: store-level key/value metadata (JSON text values)
T_META = "meta"
C_META_KEY = "key"
C_META_VALUE = "value"
META_MODEL = "model"  # the bound encoder identity
META_CHECKPOINT = "checkpoint"  # the checkpoint path given when the store was bound, or null
META_BOUND_AT = "bound_at"
META_EXCLUDES = "excludes"  # {root: [gitignore-style patterns]}: pixdex index --exclude, remembered per root
META_TAGS = "tags"  # the tagging state: label set id and specs, top, min_prob, through_id (tags.py)

# migrations: one row per applied named migration
T_MIGRATIONS = "migrations"
C_MIGRATION_NAME = "name"
C_MIGRATION_APPLIED_AT = "applied_at"

IX_CONTENT_HASH = "ix_images_content_hash"
IX_ROOT = "ix_images_root"

TABLES: dict[str, tuple[str, ...]] = {
    T_IMAGES: (
        C_ID,
        C_PATH,
        C_ROOT,
        C_SIZE,
        C_MTIME_NS,
        C_CONTENT_HASH,
        C_WIDTH,
        C_HEIGHT,
        C_FORMAT,
        C_TAKEN,
        C_CAMERA_MAKE,
        C_CAMERA_MODEL,
        C_STATUS,
        C_ERROR,
        C_INDEXED_AT,
    ),
    T_VECTORS: (C_VEC_ID, C_VEC),
    T_META: (C_META_KEY, C_META_VALUE),
    T_COPY_HASHES: (C_COPY_ID, C_COPY_VERSION, C_COPY_PDQ, C_COPY_QUALITY),
    T_TAGS: (C_TAG_ID, C_TAG_LABEL, C_TAG_PROB, C_TAG_SET),
    T_MIGRATIONS: (C_MIGRATION_NAME, C_MIGRATION_APPLIED_AT),
}

STATUS_OK = "ok"  # decoded and encoded: has a vectors row, searchable
STATUS_FAILED = "failed"  # could not be decoded: ``error`` says why; retried when the file changes
STATUSES = (STATUS_OK, STATUS_FAILED)

SQL_CHUNK = 900  # bound parameters per statement (SQLite's limit is 999 on old builds)

# ---------------------------------------------------------------------- model identity

# What a store is bound to (``meta.model`` and ``store.json["model"]``): the encoder's identity.
IDENTITY_KEYS = ("model", "checkpoint_sha256", "dim", "preprocess")
RANDOM_INIT_PREFIX = "random-init"  # checkpoint_sha256 of randomly initialised weights (tests)


def same_model(a: Optional[dict], b: Optional[dict]) -> bool:
    """Whether two encoder identities describe the same embedding space.

    The same dimension, preprocessing and weights hash; the model name counts only for randomly
    initialised weights (tests), where the name is all there is: the same weights loaded through
    another spec (``ViT-B-32:tag`` or a folder holding them) are the same model.
    """
    if not a or not b:
        return False
    if a.get("dim") != b.get("dim"):
        return False
    if (a.get("preprocess") or None) != (b.get("preprocess") or None):
        return False
    ha, hb = a.get("checkpoint_sha256"), b.get("checkpoint_sha256")
    if ha != hb:
        return False
    if ha and not str(ha).startswith(RANDOM_INIT_PREFIX):
        return True
    return a.get("model") == b.get("model")


# ---------------------------------------------------------------------- store errors, one line each

_CORRUPT_MARKERS = ("malformed", "not a database", "file is encrypted", "disk image")


def is_corrupt_db_error(message: str) -> bool:
    """Whether an SQLite error message says the database file itself is damaged."""
    m = str(message).lower()
    return any(k in m for k in _CORRUPT_MARKERS)


def db_problem(store_dir, detail: str) -> str:
    """The one line for a store whose database is damaged or empty, with the command that fixes it.

    ``detail``: SQLite's message, or ``"empty"`` for a 0-byte file. ``pixdex index`` sets a damaged
    database aside (renamed, never deleted) and rebuilds it from the photos with the model recorded in
    ``store.json``: vectors are derived data, the photos are the source.
    """
    what = "is empty (0 bytes)" if detail == "empty" else f"is damaged ({detail})"
    return (
        f"the store database {store_dir}/{DB_FILE} {what}; rebuild it from the photos with: "
        f"{pixdex_command('index', 'FOLDER', store_dir=store_dir)}"
    )
