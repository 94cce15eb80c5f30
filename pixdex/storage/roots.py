"""A store's roots: the ``--exclude`` patterns remembered per root, and ``pixdex forget ROOT``.

Roots are real paths (:func:`pixdex.paths.real_path`), the ``root`` column of ``images``. Forgetting a
root deletes its rows through the indexer's own write path (:func:`pixdex.storage.writes.apply_batch`:
rows, vectors, copy hashes and tags in one transaction), then brings the FAISS index in line with the
database and saves it atomically, as a run of ``pixdex index`` does after deleting rows. A crash
between the two leaves a FAISS file holding ids of deleted rows, which retrieval ignores and the next
writer removes. The user's files are never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command, real_path
from pixdex.storage.contract import META_EXCLUDES
from pixdex.storage.schema import ImageRow
from pixdex.storage.store import Store
from pixdex.storage.writes import Batch, apply_batch

log = logging.getLogger(__name__)


def remembered_excludes(store: Store) -> dict[str, list[str]]:
    """``{root: [patterns]}`` remembered from earlier ``pixdex index --exclude`` runs."""
    d = store.get_meta(META_EXCLUDES, {})
    return {str(k): [str(p) for p in v] for k, v in d.items()} if isinstance(d, dict) else {}


def remember_excludes(
    store: Store, roots: Sequence[str], patterns: Sequence[str] = (), clear: bool = False
) -> dict[str, list[str]]:
    """Add ``patterns`` to what each of ``roots`` remembers (``clear``: forget the old ones first) and
    return the patterns of every root. Written only when something changed."""
    old = remembered_excludes(store)
    new = dict(old)
    for r in roots:
        kept = [] if clear else list(new.get(r, []))
        kept += [p for p in patterns if p not in kept]
        if kept:
            new[r] = kept
        else:
            new.pop(r, None)
    if new != old:
        with store.session() as s, s.begin():
            store.set_meta(s, META_EXCLUDES, new)
    return new


def stored_roots(store: Store) -> list[str]:
    with store.session() as s:
        return sorted(r for (r,) in s.execute(select(ImageRow.root).distinct()))


def index_again_command(store: Store) -> str:
    """``pixdex index ROOT... --store DIR``: the command that indexes a store's folders again, ready to
    run (``FOLDER...`` for a store with no rows)."""
    return pixdex_command("index", *(stored_roots(store) or ["FOLDER..."]), store_dir=store.dir)


def forget_root(store_dir: Path, root: str) -> dict:
    """Remove every row found under ``root`` (and its remembered patterns) from the store; return
    ``{"store", "root", "removed", "total"}``. A root the store does not hold is a PixdexError naming
    the roots it holds."""
    store = Store.open_writer(store_dir)
    try:
        roots = stored_roots(store)
        want = real_path(root)
        if want not in roots:
            listed = ", ".join(roots) if roots else "none"
            raise PixdexError(f"{root} is not a root of the store {store.dir} (its roots: {listed})")
        with store.session() as s:
            ids = [i for (i,) in s.execute(select(ImageRow.id).where(ImageRow.root == want))]
        index, _ = store.reconcile_faiss()  # a FAISS file left behind by a crash is repaired first
        dim = int((store.identity or {}).get("dim") or 0)
        applied = apply_batch(store, Batch(deletes=ids), dim)
        total = 0
        if index is not None:
            index.remove(applied.removed_ids)
            total = store.save_faiss(index).get("ntotal", 0)
        remember_excludes(store, [want], clear=True)
        log.info("forgot %s: %d rows", want, len(ids))
        return {"store": str(store.dir), "root": want, "removed": len(ids), "total": total}
    finally:
        store.close()
