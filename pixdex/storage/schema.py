"""The store's database schema (SQLAlchemy 2 ORM).

The table and column names come from :mod:`pixdex.storage.contract` (search reads ``pixdex.db`` with
stdlib sqlite3 under the same names). The DDL that creates them lives in :mod:`pixdex.storage.migrations`
(named migrations, each applied once); a test checks that the ORM, the DDL and the contract agree.

``images.id`` is the FAISS id. Vectors live in their own table ``vectors`` (one row per searchable
image, written in the same transaction as its ``images`` row), so scans of ``images`` never read blobs.
Ids are never reused (``AUTOINCREMENT``), and the vector of an id never
changes: a file whose content changed gets a new row and a new id, a moved file keeps its row. So the
FAISS file can be brought in line with the database by comparing id sets alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.dialects.sqlite import DATETIME
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pixdex.storage import contract as c

# ISO-8601 text without fractions ("2021-07-14 18:03:55"): what search compares and parses.
IsoDateTime = DATETIME(
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)",
)


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = c.T_IMAGES
    __table_args__ = (
        Index(c.IX_CONTENT_HASH, c.C_CONTENT_HASH),
        Index(c.IX_ROOT, c.C_ROOT),
        {"sqlite_autoincrement": True},
    )

    # The attribute names are the column names (the contract test checks it); comments in contract.py.
    id: Mapped[int] = mapped_column(c.C_ID, Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(c.C_PATH, Text, unique=True)
    root: Mapped[str] = mapped_column(c.C_ROOT, Text)
    size: Mapped[int] = mapped_column(c.C_SIZE, Integer)
    mtime_ns: Mapped[int] = mapped_column(c.C_MTIME_NS, Integer)
    content_hash: Mapped[Optional[str]] = mapped_column(c.C_CONTENT_HASH, String(64))
    width: Mapped[Optional[int]] = mapped_column(c.C_WIDTH, Integer)
    height: Mapped[Optional[int]] = mapped_column(c.C_HEIGHT, Integer)
    format: Mapped[Optional[str]] = mapped_column(c.C_FORMAT, String(16))
    taken_at: Mapped[Optional[datetime]] = mapped_column(c.C_TAKEN, IsoDateTime)
    camera_make: Mapped[Optional[str]] = mapped_column(c.C_CAMERA_MAKE, Text)
    camera_model: Mapped[Optional[str]] = mapped_column(c.C_CAMERA_MODEL, Text)
    status: Mapped[str] = mapped_column(c.C_STATUS, String(16))  # contract.STATUSES
    error: Mapped[Optional[str]] = mapped_column(c.C_ERROR, Text)
    indexed_at: Mapped[float] = mapped_column(c.C_INDEXED_AT, Float)

    def __repr__(self) -> str:
        return f"ImageRow(id={self.id}, path={self.path!r}, status={self.status})"


class VectorRow(Base):
    """The embedding of one ``ok`` image: float32 little-endian, L2-normalised, ``dim`` values."""

    __tablename__ = c.T_VECTORS

    image_id: Mapped[int] = mapped_column(
        c.C_VEC_ID, Integer, ForeignKey(f"{c.T_IMAGES}.{c.C_ID}", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(c.C_VEC, LargeBinary)


class CopyHashRow(Base):
    """The perceptual hashes of one ``ok`` image (dedup's copy tier): ``pdq`` holds
    ``perceptual.COPY_LAYOUT`` rows of 32 bytes for ``version == perceptual.COPY_VERSION``; NULL when
    the file could not be decoded for hashing. ``quality``: PDQ's quality of the image."""

    __tablename__ = c.T_COPY_HASHES

    image_id: Mapped[int] = mapped_column(
        c.C_COPY_ID, Integer, ForeignKey(f"{c.T_IMAGES}.{c.C_ID}", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(c.C_COPY_VERSION, Integer)
    pdq: Mapped[Optional[bytes]] = mapped_column(c.C_COPY_PDQ, LargeBinary)
    quality: Mapped[Optional[int]] = mapped_column(c.C_COPY_QUALITY, Integer)  # PDQ's, 0-100


class TagRow(Base):
    """One zero-shot label of one ``ok`` image with its probability (see contract.T_TAGS)."""

    __tablename__ = c.T_TAGS
    __table_args__ = (Index(c.IX_TAGS_LABEL, c.C_TAG_LABEL, c.C_TAG_PROB),)

    image_id: Mapped[int] = mapped_column(
        c.C_TAG_ID, Integer, ForeignKey(f"{c.T_IMAGES}.{c.C_ID}", ondelete="CASCADE"), primary_key=True
    )
    label: Mapped[str] = mapped_column(c.C_TAG_LABEL, Text(collation="NOCASE"), primary_key=True)
    prob: Mapped[float] = mapped_column(c.C_TAG_PROB, Float)
    label_set: Mapped[str] = mapped_column(c.C_TAG_SET, String(32))


class MetaRow(Base):
    """Store-level key/value metadata (JSON text values): the bound model identity, etc."""

    __tablename__ = c.T_META

    key: Mapped[str] = mapped_column(c.C_META_KEY, String(64), primary_key=True)
    value: Mapped[str] = mapped_column(c.C_META_VALUE, Text)


class MigrationRow(Base):
    """One row per applied named migration (see :mod:`pixdex.storage.migrations`)."""

    __tablename__ = c.T_MIGRATIONS

    name: Mapped[str] = mapped_column(c.C_MIGRATION_NAME, String(128), primary_key=True)
    applied_at: Mapped[float] = mapped_column(c.C_MIGRATION_APPLIED_AT, Float)
