"""SearchEngine: one store opened for searching (the CLI opens one per process, `serve` keeps one).

Loads lazily and only what a query needs: the FAISS file on the first search, the numpy text tower on
the first text query (no torch), the torch image encoder only for ``--image`` files. ``--like`` uses
the stored vector, so it needs no model at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command
from pixdex.search.filters import Filters
from pixdex.search.query import QueryPart, build_parts, encode_parts
from pixdex.search.store_view import Row, StoreView

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    row: Row

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def path(self) -> str:
        return self.row.path

    def to_dict(self) -> dict:
        """rank, score, path, id, width, height, taken_at (the `pixdex search --json` objects)."""
        return {"rank": self.rank, "score": round(self.score, 6), **self.row.to_dict()}


class SearchEngine:
    def __init__(self, store_dir: Path):
        self.store_dir = Path(store_dir)
        self.view = StoreView(self.store_dir)
        self._lock = threading.RLock()
        self._index = None
        self._index_sig = None  # (inode, mtime, size) of the FAISS file mapped, None: not looked yet
        self._text = None
        self._image = None

    # ------------------------------------------------------------------ lazy parts

    def count(self) -> int:
        return self.view.live_count()

    def _model_spec(self) -> tuple[str, Optional[str]]:
        ident = self.view.identity
        spec = ident.get("model")
        if not spec:
            raise PixdexError(
                f"the store at {self.store_dir} is not bound to a model yet; run: "
                f"{pixdex_command('index', 'FOLDER', store_dir=self.store_dir)}"
            )
        ckpt = ident.get("checkpoint") or self.view.sidecar.get("checkpoint")
        return spec, ckpt

    def index(self):
        """The FAISS index (None when the store has no FAISS file: exact search then).

        Memory-mapped read-only: opening costs milliseconds instead of reading the whole file, and pages
        are shared between processes. Storage replaces the file atomically, so a long-lived engine
        (`serve`) notices a new file by its inode/mtime and maps that one instead.
        """
        with self._lock:
            path = self.view.faiss_path()
            try:
                st = path.stat()
                sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            except OSError:
                sig = None
            if sig != self._index_sig:
                self._index = self._read_index(path) if sig is not None else None
                self._index_sig = sig
                if sig is None:
                    log.info("no FAISS index in %s: exact search", self.store_dir)
            return self._index

    @staticmethod
    def _read_index(path: Path):
        import faiss

        try:
            return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        except RuntimeError:
            log.debug("cannot memory-map %s; reading it", path)
        try:
            return faiss.read_index(str(path))
        except RuntimeError as e:
            raise PixdexError(f"cannot read the FAISS index {path}: {str(e).splitlines()[0]}") from e

    def text_encoder(self):
        """The store's numpy text tower; exported once through torch when the store lacks it."""
        with self._lock:
            if self._text is None:
                from pixdex.encoders.textexport import load_text_encoder, open_text_encoder

                ident = self.view.identity
                self._text = load_text_encoder(self.store_dir, ident or None)
                if self._text is None:
                    spec, ckpt = self._model_spec()
                    self._text = open_text_encoder(self.store_dir, {**ident, "model": spec}, ckpt)
            return self._text

    def image_encoder(self):
        with self._lock:
            if self._image is None:
                spec, ckpt = self._model_spec()
                from pixdex.encoders.encoder import load_encoder

                self._image = load_encoder(spec, checkpoint=ckpt, towers=("image",))
            return self._image

    # ------------------------------------------------------------------ encoding

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        return self.text_encoder().encode_texts(list(texts))

    def encode_image_files(self, files: list[str]) -> np.ndarray:
        """Embed image files outside the store, loaded exactly as the indexer loads them (torch)."""
        from pixdex.images import DecodeError, read_file

        for f in files:
            if not Path(f).expanduser().is_file():
                raise PixdexError(f"--image: no such file: {f}")
        enc = self.image_encoder()
        batch = []
        for f in files:
            path = str(Path(f).expanduser())
            try:
                batch.append(self._model_input(enc, read_file(path), path))
            except (DecodeError, ValueError, OSError) as e:
                raise PixdexError(f"--image: cannot read {f}: {e}") from e
        return enc.encode_images(np.stack(batch))

    def encode_image_bytes(self, data: bytes, name: str = "upload") -> np.ndarray:
        """Embed an image given as bytes (an upload to `serve`), decoded in memory, never written out.
        Bytes that are not an image: a one-line :class:`PixdexError`."""
        from pixdex.images import DecodeError

        enc = self.image_encoder()
        try:
            x = self._model_input(enc, data, name)
        except (DecodeError, ValueError, OSError) as e:
            raise PixdexError(f"not an image that pixdex can read: {e}") from e
        return enc.encode_images(x[None])[0]

    @staticmethod
    def _model_input(enc, data: bytes, name: str) -> np.ndarray:
        """The model's input for image bytes: the indexer's decoder at the model's draft size, then its
        preprocessing (the same pixels `pixdex index` feeds the model)."""
        from pixdex.images import decode, draft_side

        image, _ = decode(data, draft_side(enc.preprocess), name=name)
        return np.asarray(enc.preprocess(image), dtype=np.float32)

    def stored_vectors(self, ids: list[int]) -> np.ndarray:
        found, vecs = self.view.vectors(np.asarray(ids, dtype=np.int64))
        missing = sorted(set(int(i) for i in ids) - set(found.tolist()))
        if missing:
            raise PixdexError(f"--like: no indexed image with id {missing[0]}")
        order = {int(i): j for j, i in enumerate(found)}
        return vecs[[order[int(i)] for i in ids]]

    def encode(self, parts: Sequence[QueryPart]) -> np.ndarray:
        return encode_parts(parts, self.encode_texts, self.encode_image_files, self.stored_vectors)

    # ------------------------------------------------------------------ searching

    def search(
        self,
        query_vector: np.ndarray,
        k: int = 20,
        filters: Optional[Filters] = None,
        exclude: Sequence[int] = (),
    ) -> list[Hit]:
        from pixdex.search.retrieval import search_vectors

        exclude = set(int(i) for i in exclude)
        with self._lock:
            index = self.index()
            pairs = search_vectors(self.view, index, query_vector, k + len(exclude), filters)
            pairs = [p for p in pairs if p[0] not in exclude][:k]
            rows = self.view.rows([i for i, _ in pairs])
        live = [
            (rows[i], s) for i, s in pairs if i in rows
        ]  # a row deleted between the two reads is left out
        return [Hit(rank, s, r) for rank, (r, s) in enumerate(live, 1)]

    def list_tagged(self, k: int = 20, filters: Optional[Filters] = None) -> list[Hit]:
        """Images carrying every tag of ``filters.tags`` (and passing its other filters), by probability
        (for several tags: the lowest of theirs), ties by id; ``score`` is that probability."""
        filters = filters or Filters()
        if not filters.tags:
            raise PixdexError("give a query or at least one --tag")
        with self._lock:
            ids, scores = self.view.tag_scores(self.view.matching_ids(filters), filters.tags)
            order = np.lexsort((ids, -scores))
            if filters.min_score is not None:
                order = order[scores[order] >= filters.min_score]
            order = order[:k]
            rows = self.view.rows(ids[order].tolist())
        live = [(rows[int(ids[j])], float(scores[j])) for j in order if int(ids[j]) in rows]
        return [Hit(rank, s, r) for rank, (r, s) in enumerate(live, 1)]

    def search_parts(
        self, parts: Sequence[QueryPart], k: int, filters: Optional[Filters] = None
    ) -> list[Hit]:
        return self.search(self.encode(parts), k, filters)

    def find(
        self, parts: Optional[Sequence[QueryPart]], k: int, filters: Optional[Filters] = None
    ) -> list[Hit]:
        """What `pixdex search` and `serve`'s ``/api/search`` answer: the query ``parts`` ranked under
        ``filters``, or with no parts the images carrying ``filters.tags`` (:meth:`list_tagged`)."""
        if parts is None:
            return self.list_tagged(k, filters)
        return self.search_parts(parts, k, filters)

    def search_text(self, text: str, k: int = 20, filters: Optional[Filters] = None) -> list[Hit]:
        return self.search_parts(build_parts(text), k, filters)

    def similar(
        self, image_id: int, k: int = 20, filters: Optional[Filters] = None
    ) -> tuple[Optional[Row], list[Hit]]:
        """Images like a stored one (the image itself left out), under ``filters``; (None, []) for an
        unknown id."""
        row = self.view.row(image_id)
        if row is None:
            return None, []
        found, vecs = self.view.vectors([image_id])
        if len(found) == 0:
            return None, []
        return row, self.search(vecs[0], k, filters, exclude=[image_id])

    def row(self, image_id: int) -> Optional[Row]:
        return self.view.row(image_id)

    def close(self) -> None:
        self.view.close()
