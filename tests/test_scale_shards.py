"""pixdex.scale without a cluster: staged shards (round trip, identity check, the staging folder as a
ledger) and the one-line error when Ray is not installed."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from pixdex.errors import PixdexError
from pixdex.scale import require_ray
from pixdex.scale.shards import finished_shards, read_shard, write_shard

IDENT = {"model": "m", "checkpoint_sha256": "a" * 64, "dim": 4, "preprocess": {"image_size": 8}}


def test_shard_round_trip_keeps_vectors_nulls_and_meta(tmp_path):
    v = np.arange(4, dtype=np.float32)
    p = write_shard(
        tmp_path, ["a", "b", "c"], [{"x": 1}, {"e": "bad"}, {}], [v, None, -v], IDENT, 2, [None, v, None]
    )
    s = read_shard(p, dict(IDENT, model="renamed"))  # same weights under another name: the same model
    assert s.items == ["a", "b", "c"] and s.metas == [{"x": 1}, {"e": "bad"}, {}] and s.encoded == 2
    assert np.array_equal(s.vector(0), v) and s.vector(1) is None and np.array_equal(s.vector(2), -v)
    assert s.text_vector(0) is None and np.array_equal(s.text_vector(1), v)
    with pytest.raises(PixdexError, match="holds vectors of model 'm'"):
        read_shard(p, dict(IDENT, checkpoint_sha256="b" * 64))


def test_staging_lists_finished_shards_and_drops_torn_ones(tmp_path):
    p = write_shard(tmp_path, ["a"], [{}], [None], IDENT, 0)
    (tmp_path / ".shard-x.parquet.123.tmp").write_bytes(b"torn")
    assert finished_shards(tmp_path) == [p]
    assert not (tmp_path / ".shard-x.parquet.123.tmp").exists()
    assert finished_shards(tmp_path / "missing") == []


def test_without_ray_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(PixdexError) as e:
        require_ray()
    assert 'pip install "pixdex[scale]"' in str(e.value) and "\n" not in str(e.value)


def test_index_ray_without_ray_fails_before_creating_a_store(monkeypatch, tmp_path):
    from pixdex.indexer.run import index_paths

    monkeypatch.setitem(sys.modules, "ray", None)
    (tmp_path / "p").mkdir()
    with pytest.raises(PixdexError, match="pixdex\\[scale\\]"):
        index_paths([tmp_path / "p"], tmp_path / "s", model="pixdex-demo", ray="local", json_mode=True)
    assert not (tmp_path / "s").exists()
