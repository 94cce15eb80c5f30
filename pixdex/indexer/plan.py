"""Compare a scan with the store: what is unchanged, what must be looked at, what has gone.

Only ``stat`` results are compared here (size and mtime): an unchanged file is neither read nor hashed.
Files whose size or mtime changed, and new paths, become candidates: they are hashed and, unless the
hash is already known to the store (a touched, moved, renamed or copied file), decoded and encoded.
Rows under a scanned root whose file was not found have vanished (deleted, or moved: a candidate with
the same hash claims them), except under a root folder that now holds no image at all (an unmounted
drive looks like that): those rows are kept, with a warning. Rows of files now excluded by a pattern
(``--exclude``, ``.pixdexignore``) are dropped, and counted as excluded rather than deleted.

A file that failed before and has not changed is not tried again (it would fail the same way on every
run), unless ``retry_failed``: then it is read, hashed and decoded again like a changed file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from pixdex.indexer.scan import FileEntry, ScanResult, is_under
from pixdex.storage.contract import STATUS_FAILED
from pixdex.storage.writes import KnownFile


@dataclass(frozen=True)
class Candidate:
    entry: FileEntry
    old: Optional[KnownFile] = None  # the row at this path, when the file changed
    retry: bool = False  # an unchanged file that failed before, tried again (--retry-failed)


@dataclass
class Plan:
    candidates: list[Candidate] = field(default_factory=list)
    unchanged: int = 0
    not_retried: int = 0  # unchanged files that failed before (also counted in unchanged)
    vanished: dict[str, KnownFile] = field(default_factory=dict)
    excluded: dict[str, KnownFile] = field(default_factory=dict)  # rows of files now excluded
    protected: dict[str, int] = field(default_factory=dict)  # empty root -> rows kept (not deleted)

    @property
    def changed(self) -> int:
        return sum(1 for c in self.candidates if c.old is not None)


def make_plan(scan: ScanResult, known: dict[str, KnownFile], retry_failed: bool = False) -> Plan:
    plan = Plan()
    seen = set()
    for e in scan.files:
        seen.add(e.path)
        k = known.get(e.path)
        if k is not None and k.size == e.size and k.mtime_ns == e.mtime_ns:
            if k.status != STATUS_FAILED:
                plan.unchanged += 1
            elif retry_failed:
                plan.candidates.append(Candidate(e, k, retry=True))
            else:
                plan.unchanged += 1
                plan.not_retried += 1
        else:
            plan.candidates.append(Candidate(e, k))
    for path, k in known.items():
        if path in seen:
            continue
        if scan.is_excluded(path):
            plan.excluded[path] = k
        elif scan.covers(path, k.root):
            plan.vanished[path] = k
    # A root folder that has images in the store but now holds none is more likely an unmounted drive
    # or an empty mount point than a deliberate deletion of everything: keep its rows.
    found_in = {f.root for f in scan.files}
    for root in scan.roots:
        if not os.path.isdir(root) or root in found_in:
            continue
        if any(is_under(p, root) for p in scan.excluded_files) or any(
            is_under(d, root) for d in scan.excluded_dirs
        ):
            continue  # emptied by the user's own patterns, not by an unmounted drive
        kept = [p for p, k in plan.vanished.items() if is_under(p, root) or k.root == root]
        if kept:
            plan.protected[root] = len(kept)
            for p in kept:
                del plan.vanished[p]
    return plan
