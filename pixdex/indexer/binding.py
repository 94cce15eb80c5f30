"""The indexer's model binding: which model a run uses, loading it, and binding the store to it.

- :func:`model_choice`: the spec and checkpoint of a run from the store's bound identity and the
  command line (a bound store keeps its model; an explicit different one is loaded now to fail early);
- :func:`check_spec`: a new store's model spec resolved before the store is created (no torch);
- :class:`LazyEncoder`: loads the encoder on first use (int8 image tower on CPU), binds a new store to
  its identity and exports the text tower for torch-free search on bind; its preprocessing is available
  from a bound store's identity before the model is loaded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from pixdex.encoders.registry import DEFAULT_MODEL
from pixdex.errors import PixdexError
from pixdex.indexer.report import Timings
from pixdex.storage.contract import RANDOM_INIT_PREFIX
from pixdex.storage.store import Store

log = logging.getLogger(__name__)


class LazyEncoder:
    """Loads the encoder on first use (thread-safe) and checks it against the store's model."""

    def __init__(
        self,
        store: Store,
        spec: str,
        checkpoint: Optional[str],
        device: str,
        loader: Optional[Callable] = None,
        timings: Optional[Timings] = None,
        backend: str = "auto",
        exact: bool = False,
    ):
        self.store, self.spec, self.checkpoint, self.device = store, spec, checkpoint, device
        self.backend, self.exact = backend, exact
        self.timings = timings or Timings()
        self._loader = loader
        self._enc = None
        self._pre = None
        self._lock = threading.Lock()
        self.newly_bound = False
        self.repair_text_tower = False  # the store's exported text tower is damaged: export it again

    def get(self):
        with self._lock:
            if self._enc is None:
                with self.timings("load_model"):
                    self._enc = self._load()
            return self._enc

    @property
    def loaded(self) -> bool:
        return self._enc is not None

    def _load(self):
        new_store = self.store.identity is None
        towers = ("image", "text") if new_store or self.repair_text_tower else ("image",)
        if self._loader is not None:
            enc = self._loader(self.spec, self.checkpoint, self.device, towers)
        else:
            from pixdex.encoders.encoder import load_encoder

            enc = load_encoder(self.spec, checkpoint=self.checkpoint, device=self.device, towers=towers)
        maybe_speed_up(enc, self.backend, self.exact)
        ident = enc.identity()
        self.newly_bound = self.store.bind_model(ident, checkpoint=ident.get("checkpoint") or self.checkpoint)
        if self.newly_bound or self.repair_text_tower:
            with self.timings("export_text_tower"):
                _export_text_tower(enc, self.store.dir)
        return enc

    def preprocessor(self):
        """The preprocessing, for the workers. On a bound store this needs no model (nor torch): the
        store's identity records the preprocessing, so decoding starts while the encoder still loads."""
        pre = self._pre
        if pre is None:
            with self._lock:
                if self._pre is None:
                    self._pre = self._enc.preprocess if self._enc is not None else preprocessor_of(self.store)
                pre = self._pre
            if pre is None:
                pre = self._pre = self.get().preprocess
        return pre

    @property
    def preprocess(self) -> LazyPreprocess:
        return LazyPreprocess(self)


class LazyPreprocess:
    """``pre(img)`` and ``pre.draft_size`` of a lazy model's preprocessing (anything with a
    ``preprocessor()`` method: :class:`LazyEncoder`, the dataset embedder's model), resolved on first use."""

    def __init__(self, lazy):
        self._lazy = lazy

    @property
    def draft_size(self):
        return self._lazy.preprocessor().draft_size

    def __call__(self, img):
        return self._lazy.preprocessor()(img)


def preprocessor_of(store: Store):
    ident = store.identity or {}
    d = ident.get("preprocess")
    if not isinstance(d, dict):
        return None
    try:
        from pixdex.encoders.config import PreprocessConfig
        from pixdex.encoders.preprocess import Preprocessor

        return Preprocessor(PreprocessConfig(**d))
    except (TypeError, ValueError) as e:
        log.debug("cannot rebuild the preprocessing from the store (%s); loading the model", e)
        return None


def maybe_speed_up(enc, backend: str = "auto", exact: bool = False) -> None:
    """The backend's fast path (pixdex.encoders.backends: by default the int8 image tower on CPU, checked
    against float32 on the first batch); ``exact`` keeps float32."""
    from pixdex.encoders.backends import apply_backend

    apply_backend(enc, backend, exact)


def _export_text_tower(enc, store_dir: Path) -> None:
    try:
        from pixdex.encoders.textexport import export_text_tower
    except ImportError:
        log.debug("no text tower export available")
        return
    try:
        export_text_tower(enc, store_dir)
    except PixdexError as e:  # search re-exports on demand; indexing goes on
        log.warning("could not export the text tower for torch-free search: %s", e)


def model_choice(
    store: Store, model: Optional[str], checkpoint: Optional[Path]
) -> tuple[str, Optional[str], bool]:
    """(spec, checkpoint, load_now) for this run."""
    bound = store.identity
    ckpt = (
        str(Path(checkpoint).expanduser())
        if checkpoint is not None and str(checkpoint) != "random"
        else ("random" if checkpoint is not None else None)
    )
    if bound is None:
        return model or DEFAULT_MODEL, ckpt, True
    if (model is None or model == bound.get("model")) and ckpt is None:
        bound_ckpt = bound.get("checkpoint") or store.get_meta("checkpoint")
        if str(bound.get("checkpoint_sha256") or "").startswith(RANDOM_INIT_PREFIX):
            bound_ckpt = "random"
        return bound["model"], bound_ckpt, False
    # An explicit model or checkpoint on a bound store: load it now, so a mismatch fails before any work.
    return model or bound["model"], ckpt, True


def recorded_model(store_dir: Path) -> Optional[str]:
    """The model spec ``store.json`` records (None without one): a store whose database was lost or
    set aside is rebuilt with its own model, not the default."""
    import json

    from pixdex.storage.contract import SIDECAR_FILE

    try:
        d = json.loads((Path(store_dir) / SIDECAR_FILE).read_text(encoding="utf-8"))
        spec = d["model"]["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return spec if isinstance(spec, str) and spec else None


def store_is_bound(store: Store) -> bool:
    """Whether the store is bound to a model, read on a connection of its own that takes no lock (the
    writer's engine starts every transaction with a write lock, which an interrupted batch may still
    hold). Any doubt answers True: the caller removes an unbound store."""
    import sqlite3

    from pixdex.storage.contract import C_META_KEY, DB_FILE, META_MODEL, T_META
    from pixdex.storage.readonly import connect_readonly

    if recorded_model(store.dir) is not None:
        return True
    try:
        conn = connect_readonly(store.dir / DB_FILE, timeout=1)
        try:
            row = conn.execute(f"SELECT 1 FROM {T_META} WHERE {C_META_KEY} = ?", (META_MODEL,)).fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return True
    return row is not None


def text_tower_needs_repair(store: Store) -> bool:
    """Whether a bound store's exported text tower is missing or damaged (the run then loads the text
    tower too and exports it again)."""
    try:
        from pixdex.encoders.textexport import text_tower_problem
    except ImportError:
        return False
    from pixdex.storage.contract import TEXT_TOWER_META

    if not (store.dir / TEXT_TOWER_META).exists():
        return False  # never exported (or not exportable): search exports it on first use
    problem = text_tower_problem(store.dir, store.identity)
    if problem:
        log.warning("%s: exporting the text tower again", problem)
    return problem is not None


def check_spec(spec: str, checkpoint: Optional[Path]) -> None:
    """Resolve a model spec (no torch) so an unknown model or missing weights fail before the store exists."""
    from pixdex.encoders.spec import resolve_spec

    resolve_spec(spec, str(checkpoint) if checkpoint is not None else None)
