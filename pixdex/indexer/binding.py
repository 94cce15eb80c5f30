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
import time
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
    """Loads the encoder on first use (thread-safe) and checks it against the store's model.

    :meth:`start` loads it in a background thread instead (importing torch, reading the weights, the int8
    conversion), so that scanning, reading and decoding go on meanwhile; :meth:`get` waits for it. The
    store is bound (and the text tower exported) in the thread that calls :meth:`get`.
    """

    def __init__(
        self,
        store: Store,
        spec: str,
        checkpoint: Optional[str],
        device: str,
        loader: Optional[Callable] = None,
        timings: Optional[Timings] = None,
        on_ready: Optional[Callable[[], None]] = None,
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
        self.on_ready = on_ready  # called (from the loading thread) once the model is loaded
        self.ready_at: Optional[float] = None  # time.monotonic() when the model was loaded
        self.bind_before_writes = False  # the run must bind (or check) the model before it writes
        self._thread: Optional[threading.Thread] = None
        self._loaded = None
        self._error: Optional[BaseException] = None
        self._load_s = 0.0
        # the text tower's export on bind runs beside the encoding, until finish() (the indexer's choice)
        self.export_in_background = False
        self._exporting: Optional[threading.Thread] = None
        self.export_s = 0.0

    def start(self) -> bool:
        """Start loading the model in a background thread; False when loaded or loading already."""
        with self._lock:
            if self._enc is not None or self._thread is not None:
                return False
            towers = self._towers()
            self._thread = threading.Thread(
                target=self._load_in_background, args=(towers,), name="pixdex-load-model", daemon=True
            )
            self._thread.start()
            return True

    def _load_in_background(self, towers: tuple[str, ...]) -> None:
        try:
            self._loaded = self._load_model(towers)
        except BaseException as e:  # noqa: BLE001 - handed over to the thread that calls get(), raised there
            self._error = e

    def get(self):
        with self._lock:
            if self._enc is None:
                with self.timings("wait_model"):  # what the run waited (loading overlaps other work)
                    enc = self._wait_for_model()
                self.timings.seconds["load_model"] += self._load_s  # what loading took
                self._bind(enc)
                self._enc = enc
            return self._enc

    def _wait_for_model(self):
        if self._thread is None:
            return self._load_model(self._towers())
        self._thread.join()
        self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        enc, self._loaded = self._loaded, None
        return enc

    @property
    def loaded(self) -> bool:
        return self._enc is not None

    @property
    def load_seconds(self) -> float:
        """How long loading the model took (in the background or not)."""
        return self._load_s

    def _towers(self) -> tuple[str, ...]:
        new_store = self.store.identity is None
        return ("image", "text") if new_store or self.repair_text_tower else ("image",)

    def _load_model(self, towers: tuple[str, ...]):
        """The encoder with its int8 image tower; touches no store (it may run in a background thread)."""
        t = time.monotonic()
        if self._loader is not None:
            enc = self._loader(self.spec, self.checkpoint, self.device, towers)
        else:
            from pixdex.encoders.encoder import load_encoder

            enc = load_encoder(self.spec, checkpoint=self.checkpoint, device=self.device, towers=towers)
        maybe_speed_up(enc, self.backend, self.exact)
        enc.identity()  # hashes the weights file once (cached), here rather than when binding
        self.ready_at = time.monotonic()
        self._load_s = self.ready_at - t
        if self.on_ready is not None:
            self.on_ready()
        return enc

    def _bind(self, enc) -> None:
        ident = enc.identity()
        self.newly_bound = self.store.bind_model(ident, checkpoint=ident.get("checkpoint") or self.checkpoint)
        if not (self.newly_bound or self.repair_text_tower):
            return
        if not self.export_in_background:
            self._export(enc)
            return
        self._exporting = threading.Thread(
            target=self._export, args=(enc,), name="pixdex-export-text-tower", daemon=True
        )
        self._exporting.start()

    def _export(self, enc) -> None:
        t = time.monotonic()
        try:
            _export_text_tower(enc, self.store.dir)
        except Exception as e:  # noqa: BLE001 - in a thread of its own: logged, search exports it on demand
            log.warning("could not export the text tower for torch-free search: %s", e)
        self.export_s = time.monotonic() - t

    def finish(self) -> None:
        """Wait for the text tower's export (see ``export_in_background``)."""
        if self._exporting is not None:
            self._exporting.join()
            self._exporting = None
            self.timings.seconds["export_text_tower"] += self.export_s

    def preprocessor(self):
        """The preprocessing, for the workers. It needs no model (nor torch) on a bound store (the store's
        identity records the preprocessing) or a new one (the model spec's config says it), so decoding
        starts while the encoder still loads; only a test's custom loader is asked for it."""
        pre = self._pre
        if pre is None:
            with self._lock:
                if self._pre is None:
                    self._pre = (
                        self._enc.preprocess
                        if self._enc is not None
                        else preprocessor_of(self.store) or self._spec_preprocessor()
                    )
                pre = self._pre
            if pre is None:
                pre = self._pre = self.get().preprocess
        return pre

    def _spec_preprocessor(self):
        if self._loader is not None:
            return None
        from pixdex.encoders.preprocess import Preprocessor
        from pixdex.encoders.spec import resolve_spec

        return Preprocessor(resolve_spec(self.spec, self.checkpoint).config.preprocess)

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

    def pixels(self, img):
        """The preprocessing's uint8 ``pixels(img)``; ``pre(img)`` (float32) for one without it."""
        pre = self._lazy.preprocessor()
        return pre.pixels(img) if hasattr(pre, "pixels") else pre(img)


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
