"""``pixdex status``: what a store holds and whether its FAISS index agrees with its database."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from pixdex.errors import PixdexError
from pixdex.paths import pixdex_command
from pixdex.storage import migrations
from pixdex.storage.contract import STATUS_FAILED, STATUS_OK, db_problem, is_corrupt_db_error
from pixdex.storage.faiss_index import id_checksum
from pixdex.storage.schema import ImageRow
from pixdex.storage.store import Store

log = logging.getLogger(__name__)


def store_status(store_dir: Path) -> dict:
    """Counts, model, FAISS type/ntotal and agreement with the database (read-only; safe while indexing).

    A damaged database is one line saying the command that rebuilds it, never a traceback.
    """
    return _reading(store_dir, _store_status)


def failed_files(store_dir: Path) -> list[dict]:
    """``pixdex status --failed``: ``[{"path", "reason", "since"}]`` of every file that failed, by path;
    ``since``: when it was last tried (local time, ISO 8601). Read-only."""
    return _reading(store_dir, _failed_files)


def _failed_files(store_dir: Path) -> list[dict]:
    with Store.open_readonly(store_dir) as store, store.session() as s:
        q = (
            select(ImageRow.path, ImageRow.error, ImageRow.indexed_at)
            .where(ImageRow.status == STATUS_FAILED)
            .order_by(ImageRow.path)
        )
        return [
            {
                "path": p,
                "reason": e or "unknown error",
                "since": datetime.fromtimestamp(t).isoformat(timespec="seconds") if t else None,
            }
            for p, e, t in s.execute(q)
        ]


def print_failed(rows: list[dict], stream=None) -> None:
    """One line per failed file: when, path, reason (full paths, also when not on a terminal)."""
    out = stream or sys.stdout
    for r in rows:
        out.write(f"{r['since'] or '-'}  {r['path']}: {r['reason']}\n")
    out.write(f"{len(rows)} failed\n")


def _reading(store_dir: Path, fn):
    try:
        return fn(Path(store_dir).expanduser())
    except SQLAlchemyError as e:
        detail = str(getattr(e, "orig", e)).splitlines()[0]
        if is_corrupt_db_error(detail) or "no such table" in detail:
            raise PixdexError(db_problem(Path(store_dir).expanduser(), detail)) from e
        raise PixdexError(f"cannot read the store database in {store_dir}: {detail}") from e


def _store_status(store_dir: Path) -> dict:
    with Store.open_readonly(store_dir) as store:
        by_root = store.counts_by_root()
        indexed = sum(v.get(STATUS_OK, 0) for v in by_root.values())
        failed = sum(v.get(STATUS_FAILED, 0) for v in by_root.values())
        ident = store.identity or {}
        sidecar = store.read_sidecar()
        recorded = sidecar.get("faiss") or {}
        live = store.live_ids()
        faiss: dict = {"file": str(store.faiss_path), "present": store.faiss_path.is_file()}
        index = store.load_faiss()
        if index is None:
            faiss.update(type=None, ntotal=0, agrees=live.size == 0, missing=int(live.size), extra=0)
        else:
            ids = index.ids()
            uniq = np.unique(ids)
            missing = int(np.setdiff1d(live, uniq, assume_unique=True).size)
            extra = int(np.setdiff1d(uniq, live, assume_unique=True).size)
            checksum = id_checksum(ids)
            problem = store.faiss_problem(index, recorded)
            faiss.update(
                type=index.kind,
                ntotal=index.ntotal,
                dim=index.dim,
                nlist=index.nlist,
                trained_on=recorded.get("trained_on"),
                missing=missing,
                extra=extra,
                duplicates=int(ids.size - uniq.size),
                checksum_matches_sidecar=recorded.get("id_checksum") == checksum
                and recorded.get("ntotal") == index.ntotal,
                problem=problem,
                agrees=missing == 0
                and extra == 0
                and ids.size == uniq.size
                and index.dim == ident.get("dim", index.dim)
                and problem is None,
            )
        return {
            "store": str(store.dir),
            "model": ident.get("model"),
            "checkpoint_sha256": ident.get("checkpoint_sha256"),
            "dim": ident.get("dim"),
            "schema_version": migrations.schema_version(store.engine),
            "indexed": indexed,
            "failed": failed,
            "roots": {
                root: {"indexed": v.get(STATUS_OK, 0), "failed": v.get(STATUS_FAILED, 0)}
                for root, v in sorted(by_root.items())
            },
            "failures": [{"reason": r, "count": n} for r, n in store.failure_reasons(5)],
            "faiss": faiss,
        }


def print_status(info: dict, stream=None) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)
    console.print(f"[bold]store[/] {info['store']}")
    console.print(f"model {info['model']} (dim {info['dim']}, weights {str(info['checkpoint_sha256'])[:16]})")
    console.print(f"{info['indexed']} indexed, {info['failed']} failed")
    if info["roots"]:
        table = Table("root", "indexed", "failed")
        for root, v in info["roots"].items():
            table.add_row(root, str(v["indexed"]), str(v["failed"]))
        console.print(table)
    for r in info["failures"]:
        console.print(f"  {r['count']:>6}  {r['reason']}")
    if info["failed"]:
        hint = pixdex_command("status", "--failed", store_dir=info["store"])
        console.print(f"  list them with: {hint}", markup=False)
    f = info["faiss"]
    if f["agrees"]:
        agree = "[green]agrees with the database[/]"
    else:
        why = f"{f['missing']} missing, {f['extra']} extra"
        if f.get("problem"):
            why += f"; {f['problem']}"
        fix = pixdex_command("index", *(info["roots"] or ["FOLDER"]), store_dir=info["store"])
        agree = f"[red]does not agree with the database[/] ({why}; indexing repairs it: {escape(fix)})"
    kind = f["type"] or "none"
    if f.get("nlist"):
        kind += f" (nlist {f['nlist']})"
    console.print(f"FAISS {kind}, ntotal {f['ntotal']}: {agree}")
