"""Compare a scan with the store: what is unchanged, what must be looked at, what has gone.

Only ``stat`` results are compared here (size and mtime): an unchanged file is neither read nor hashed.
Files whose size or mtime changed, and new paths, become candidates: they are hashed and, unless the
hash is already known to the store (a touched, moved, renamed or copied file), decoded and encoded.
Rows under a scanned root whose file was not found have vanished (deleted, or moved: a candidate with
the same hash claims them), except under a root folder that now holds no image at all (an unmounted
drive looks like that): those rows are kept, with a warning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from pixdex.indexer.scan import FileEntry, ScanResult, is_under
from pixdex.storage.writes import KnownFile


@dataclass(frozen=True)
class Candidate:
    entry: FileEntry
    old: Optional[KnownFile] = None  # the row at this path, when the file changed


@dataclass
class Plan:
    candidates: list[Candidate] = field(default_factory=list)
    unchanged: int = 0
    vanished: dict[str, KnownFile] = field(default_factory=dict)
    protected: dict[str, int] = field(default_factory=dict)  # empty root -> rows kept (not deleted)

    @property
    def changed(self) -> int:
        return sum(1 for c in self.candidates if c.old is not None)


def make_plan(scan: ScanResult, known: dict[str, KnownFile]) -> Plan:
    plan = Plan()
    seen = set()
    for e in scan.files:
        seen.add(e.path)
        k = known.get(e.path)
        if k is not None and k.size == e.size and k.mtime_ns == e.mtime_ns:
            plan.unchanged += 1
        else:
            plan.candidates.append(Candidate(e, k))
    for path, k in known.items():
        if path not in seen and scan.covers(path):
            plan.vanished[path] = k
    # A root folder that has images in the store but now holds none is more likely an unmounted drive
    # or an empty mount point than a deliberate deletion of everything: keep its rows.
    for root in scan.roots:
        if not os.path.isdir(root) or any(is_under(f.path, root) for f in scan.files):
            continue
        kept = [p for p in plan.vanished if is_under(p, root)]
        if kept:
            plan.protected[root] = len(kept)
            for p in kept:
                del plan.vanished[p]
    return plan
