"""atomic_write: unique temporary names, whole replacement, nothing left behind on failure."""

from __future__ import annotations

import os
import threading

import pytest

from pixdex import fsutil
from pixdex.fsutil import atomic_write


def test_content_is_replaced_whole_for_bytes_text_and_writers(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write(target, b"x" * 10_000)
    atomic_write(target, b"short")  # no tail of the longer old content
    assert target.read_bytes() == b"short"
    atomic_write(target, "été\n", encoding="utf-8")
    assert target.read_bytes() == "été\n".encode()
    atomic_write(target, lambda p: p.write_bytes(b"from a writer"))
    assert target.read_bytes() == b"from a writer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_each_write_uses_its_own_temporary_file_next_to_the_target(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((os.fspath(src), os.fspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(fsutil.os, "replace", spy)
    target = tmp_path / "index.faiss"
    for i in range(3):
        atomic_write(target, f"v{i}")
    temps = [src for src, _ in seen]
    assert len(set(temps)) == 3  # never a fixed name such as index.faiss.tmp
    assert all(os.path.dirname(t) == str(tmp_path) for t in temps)  # same folder: rename is atomic
    assert all(dst == str(target) for _, dst in seen) and target.read_text() == "v2"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "store.json"
    target.write_text("old")

    def broken(p):
        p.write_bytes(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # not bytes, text or a writer
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["store.json"]


def test_permissions_follow_the_umask_unless_given(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", b"1")
        atomic_write(tmp_path / "b", b"1", mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o640  # as a plain open() would create it
    assert (tmp_path / "b").stat().st_mode & 0o777 == 0o644


def test_concurrent_writers_never_show_a_torn_file(tmp_path):
    """Two writers replace one file over and over while a reader reads it: every read is one whole
    version (with a shared temporary name, writers would write into each other's file)."""
    target = tmp_path / "text_tower.safetensors"
    versions = [bytes([65 + k]) * (1 << 20) for k in range(2)]
    atomic_write(target, versions[0])
    errors: list[str] = []
    stop = threading.Event()

    def writer(k):
        try:
            for _ in range(30):
                atomic_write(target, versions[k], durable=False)
        except OSError as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    def reader():
        while not stop.is_set():
            data = target.read_bytes()
            if data not in versions:
                errors.append(f"torn read of {len(data)} bytes")
                return

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    r = threading.Thread(target=reader)
    r.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    r.join()
    assert errors == []
    assert target.read_bytes() in versions
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
