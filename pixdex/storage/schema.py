# LEAD NOTE (remove once done): docs/ARCHITECTURE.md storage section has a binding decision: vectors in
# their own table `vectors(image_id, vector)`, not a column of `images` (search's store_view.py reads that).
"""The store's database schema (SQLAlchemy 2 ORM).

The table and column names here are a contract (docs/ARCHITECTURE.md, storage section): search reads
``pixdex.db`` with stdlib sqlite3. The DDL that creates them lives in :mod:`pixdex.storage.migrations`
(named migrations, each applied once); a test checks that the two agree.

``images.id`` is the FAISS id. Vectors live in their own table ``vectors`` (one row per searchable
image, written in the same transaction as its ``images`` row), so scans of ``images`` never read blobs. Ids are never reused (``AUTOINCREMENT``), and the vector of an id never
changes: a file whose content changed gets a new row and a new id, a moved file keeps its row. So the
FAISS file can be brought in line with the database by comparing id sets alone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Optional

from sqlalchemy import Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.dialects.sqlite import DATETIME
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# ISO-8601 text without fractions ("2021-07-14 18:03:55"): what search compares and parses.
IsoDateTime = DATETIME(
    storage_format="%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d",
    regexp=r"(\d+)-(\d+)-(\d+) (\d+):(\d+):(\d+)",
)

STATUS_OK = "ok"  # decoded and encoded: has a vector, searchable
STATUS_FAILED = "failed"  # could not be decoded: ``error`` says why; retried when the file changes


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = (
        Index("ix_images_content_hash", "content_hash"),
        Index("ix_images_root", "root"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text, unique=True)  # absolute path (str)
    root: Mapped[str] = mapped_column(Text)  # the indexed root folder the file was found under
    size: Mapped[int] = mapped_column(Integer)  # bytes
    mtime_ns: Mapped[int] = mapped_column(Integer)  # st_mtime_ns
    content_hash: Mapped[Optional[str]] = mapped_column(String(64))  # blake2b-128 hex of the bytes
    width: Mapped[Optional[int]] = mapped_column(Integer)  # after EXIF orientation
    height: Mapped[Optional[int]] = mapped_column(Integer)
    format: Mapped[Optional[str]] = mapped_column(String(16))  # Pillow format: JPEG, PNG, HEIF, ...
    taken_at: Mapped[Optional[datetime]] = mapped_column(IsoDateTime)  # EXIF DateTimeOriginal (local time)
    camera_make: Mapped[Optional[str]] = mapped_column(Text)
    camera_model: Mapped[Optional[str]] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # STATUS_OK (has a vectors row) | STATUS_FAILED
    error: Mapped[Optional[str]] = mapped_column(Text)  # why it failed (one line)
    indexed_at: Mapped[float] = mapped_column(Float)  # unix time of the last write

    def __repr__(self) -> str:
        return f"ImageRow(id={self.id}, path={self.path!r}, status={self.status})"


class VectorRow(Base):
    """The embedding of one ``ok`` image: float32 little-endian, L2-normalised, ``dim`` values."""

    __tablename__ = "vectors"

    image_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    vector: Mapped[bytes] = mapped_column(LargeBinary)


class MetaRow(Base):
    """Store-level key/value metadata (JSON text values): the bound model identity, etc."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class MigrationRow(Base):
    """One row per applied named migration (see :mod:`pixdex.storage.migrations`)."""

    __tablename__ = "migrations"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    applied_at: Mapped[float] = mapped_column(Float)
