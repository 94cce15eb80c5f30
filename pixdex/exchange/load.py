"""``pixdex import``: an export folder (:mod:`pixdex.exchange.layout`) read back into a store.

The export's encoder identity must be the same model as the target store's (``contract.same_model``);
a new store is bound to it. A store export becomes image rows with their vectors (paths already in the
store are left as they are: a second import of the same folder, or one resumed after a kill, adds only
what is missing; each chunk is one transaction), then the FAISS index is built once; a dataset export
goes into a dataset embedding store (vectors keyed by content and caption hash; rows already there are
kept). Copy-tier hashes are not part of an export: ``pixdex index`` over the same folders computes
them (its backfill pass) for the rows whose files it can read, without re-encoding.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from pathlib import Path

from pixdex.errors import PixdexError
from pixdex.exchange import layout as L
from pixdex.storage.contract import same_model

log = logging.getLogger(__name__)


def _refuse_other_model(bound: dict | None, info: dict, src: Path, target: Path) -> None:
    if bound is not None and not same_model(bound, info["model"]):
        raise PixdexError(
            f"{src} holds vectors of model {info['model'].get('model')!r} (dim {info['dim']}), but the "
            f"store {target} is bound to {bound.get('model')!r} (dim {bound.get('dim')}): import into "
            "another --store"
        )


def import_export(src: Path, store_dir: Path, chunk_rows: int = L.CHUNK_ROWS) -> dict:
    """Read the export at ``src`` into the store at ``store_dir`` (a pixdex store for a store export, a
    dataset embedding store for a dataset export); return counts."""
    src = Path(src).expanduser()
    info = L.read_meta(src)
    if int(info["model"].get("dim") or info["dim"]) != int(info["dim"]):
        raise PixdexError(f"{src / L.EXPORT_META}: the model's dim and the vectors' dim differ")
    t0 = time.monotonic()
    if info["kind"] == L.KIND_DATASET:
        summary = _import_dataset(src, info, Path(store_dir).expanduser(), chunk_rows)
    else:
        summary = _import_store(src, info, Path(store_dir).expanduser(), chunk_rows)
    summary.update(source=str(src), kind=info["kind"], elapsed_s=round(time.monotonic() - t0, 3))
    return summary


def _import_store(src: Path, info: dict, store_dir: Path, chunk_rows: int) -> dict:
    from pixdex.storage import faiss_index
    from pixdex.storage.store import Store
    from pixdex.storage.writes import Batch, NewRow, apply_batch, known_files

    dim = int(info["dim"])
    store = Store.open_writer(store_dir)
    added = skipped = 0
    try:
        _refuse_other_model(store.identity, info, src, store_dir)
        ident = info["model"]
        store.bind_model(ident, checkpoint=ident.get("checkpoint"))
        known = set(known_files(store))
        for meta, img, _ in L.iter_export(src, info, chunk_rows):
            L.check_unit(img, str(src))
            batch = Batch()
            for k, r in enumerate(meta.to_pylist()):
                path = r[L.C_IMAGE_PATH]
                if not path or path in known:
                    skipped += 1
                    continue
                known.add(path)
                batch.inserts.append(
                    NewRow(
                        path,
                        r.get("root") or str(Path(path).parent),
                        int(r.get("size") or 0),
                        int(r.get("mtime_ns") or 0),
                        r.get("content_hash"),
                        width=r.get("width"),
                        height=r.get("height"),
                        format=r.get("format"),
                        taken_at=_as_datetime(r.get("taken_at")),
                        camera_make=r.get("camera_make"),
                        camera_model=r.get("camera_model"),
                        vector=img[k],
                    )
                )
            if batch.inserts:
                apply_batch(store, batch, dim)
                added += len(batch.inserts)
        index, _ = faiss_index.reconcile(
            store.load_faiss(verify=True), dim, store.live_ids(), store.vectors, faiss_index.ivf_threshold()
        )
        faiss_info = store.save_faiss(index)
    finally:
        store.close()
    return {"store": str(store_dir), "added": added, "skipped_existing": skipped, "faiss": faiss_info}


def _as_datetime(v):
    if v is None or isinstance(v, datetime):
        return v
    return datetime.fromisoformat(str(v))


def _import_dataset(src: Path, info: dict, store_dir: Path, chunk_rows: int) -> dict:
    from pixdex.dataset.store import EmbeddingStore

    before = None
    with EmbeddingStore.open(store_dir) as store:
        _refuse_other_model(store.identity, info, src, store_dir)
        store.bind(info["model"])
        before = store.counts()
        rows = 0
        for meta, img, txt in L.iter_export(src, info, chunk_rows):
            L.check_unit(img, str(src))
            L.check_unit(txt, str(src))
            hashes, text_hashes = (
                meta.column("content_hash").to_pylist(),
                meta.column("text_hash").to_pylist(),
            )
            store.add(
                images=[(h, v, None) for h, v in zip(hashes, img)],
                captions=list(zip(text_hashes, txt)),
            )
            rows += meta.num_rows
        after = store.counts()
    return {
        "store": str(store_dir),
        "rows": rows,
        "images_added": after["images"] - before["images"],
        "captions_added": after["captions"] - before["captions"],
    }
