"""`pixdex index` progress and timing (#13): a spinner while the model loads, the bar moving per file, one
rate (images encoded per second, model loading excluded) in the bar and the summary, the total wall time;
the model loading in the background while files are read and decoded."""

from __future__ import annotations

import io
import threading
import time

import pytest
from index_support import make_images

from pixdex.errors import PixdexError
from pixdex.indexer import report
from pixdex.indexer import run as run_mod
from pixdex.indexer.run import index_paths

MODEL = "tiny-vit"


class RecordingProgress(report.RunProgress):
    instances: list = []

    def __init__(self, quiet):
        super().__init__(quiet)
        self.advances: list[int] = []
        self.batches: list[int] = []
        self.loading_calls: list[str] = []
        RecordingProgress.instances.append(self)

    def loading(self, model):
        self.loading_calls.append(model)
        super().loading(model)

    def advance(self, n=1):
        self.advances.append(n)
        super().advance(n)

    def add_encoded(self, n):
        self.batches.append(n)
        super().add_encoded(n)


@pytest.fixture()
def recorded(monkeypatch):
    RecordingProgress.instances = []
    monkeypatch.setattr(run_mod, "RunProgress", RecordingProgress)
    return RecordingProgress.instances


def slow_loader(seconds):
    def load(spec, checkpoint, device, towers):
        from pixdex.encoders.encoder import load_encoder

        time.sleep(seconds)
        return load_encoder(spec, checkpoint=checkpoint, device=device, towers=towers)

    return load


def test_bar_moves_per_file_and_the_encoded_count_per_batch(tmp_path, recorded):
    make_images(tmp_path / "p", 10)
    (tmp_path / "p" / "broken.jpg").write_bytes(b"not an image")
    s = index_paths([tmp_path / "p"], tmp_path / "store", model=MODEL, json_mode=True, batch_size=4)
    (progress,) = recorded
    assert s["encoded"] == 10 and s["failed"] == 1
    assert progress.advances == [1] * 11  # one step per file, the failed one included
    assert progress.batches == [4, 4, 2]
    assert progress.loading_calls == [MODEL]


def test_summary_rate_leaves_out_the_model_loading(tmp_path, recorded):
    make_images(tmp_path / "p", 6)
    before = time.time()
    s = index_paths(
        [tmp_path / "p"],
        tmp_path / "store",
        model=MODEL,
        json_mode=True,
        batch_size=4,
        encoder_loader=slow_loader(0.5),
    )
    (progress,) = recorded
    assert s["encoded"] == 6
    assert s["startup_s"] >= 0.5  # the loader's sleep is start-up...
    assert s["elapsed_s"] > s["startup_s"]
    # ...and not in the rate: encoded over the seconds from the model ready to the last batch
    assert s["images_per_s"] == report.encode_rate(6, progress.encode_seconds())
    assert s["images_per_s"] > s["encoded"] / s["elapsed_s"]
    assert before <= s["first_batch_at"] <= time.time()


def test_nothing_encoded_has_no_start_up_and_no_rate(tmp_path, recorded):
    make_images(tmp_path / "p", 3)
    index_paths([tmp_path / "p"], tmp_path / "store", model=MODEL, json_mode=True)
    s = index_paths([tmp_path / "p"], tmp_path / "store", model=None, json_mode=True)
    assert s["encoded"] == 0 and s["startup_s"] is None and s["images_per_s"] == 0.0
    assert s["first_batch_at"] is None and recorded[-1].loading_calls == []


def test_printed_summary_gives_wall_time_start_up_and_rate():
    summary = dict(
        new=120, updated=0, moved=0, deleted=0, unchanged=0, failed=0, encoded=120, elapsed_s=9.84,
        startup_s=2.13, images_per_s=15.62, store="/s", total=120, model="m", faiss={},
    )  # fmt: skip
    buf = io.StringIO()
    report.print_summary(summary, stream=buf)
    assert "120 encoded in 9.8 s: start-up 2.1 s, 15.6 images/s" in buf.getvalue()


def test_spinner_is_drawn_as_soon_as_the_model_starts_loading(tmp_path, monkeypatch):
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(
        report, "_terminal_console", lambda: Console(file=out, force_terminal=True, width=150)
    )
    make_images(tmp_path / "p", 3)
    index_paths([tmp_path / "p"], tmp_path / "store", model=MODEL, json_mode=False)
    text = out.getvalue()
    assert "loading model ..." in text and MODEL in text
    assert "3 encoded" in text and "images/s" in text


def test_model_loads_in_a_background_thread_and_its_errors_reach_the_run(tmp_path, monkeypatch):
    from pixdex.encoders import encoder

    threads = []
    real = encoder.load_encoder

    def recording(*a, **k):
        threads.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(encoder, "load_encoder", recording)
    make_images(tmp_path / "p", 3)
    index_paths([tmp_path / "p"], tmp_path / "s1", model=MODEL, json_mode=True)  # new store
    from pixdex.storage.contract import TEXT_TOWER_FILE, TEXT_TOWER_META

    # exported beside the encoding, and whole by the time the run returns
    assert (tmp_path / "s1" / TEXT_TOWER_FILE).is_file() and (tmp_path / "s1" / TEXT_TOWER_META).is_file()
    make_images(tmp_path / "p", 2, seed=5, start=10)
    index_paths([tmp_path / "p"], tmp_path / "s1", json_mode=True)  # bound store, 2 new files
    assert threads == ["pixdex-load-model", "pixdex-load-model"]

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(PixdexError, match="cannot read checkpoint"):
        index_paths([tmp_path / "p"], tmp_path / "s2", model=MODEL, checkpoint=bad, json_mode=True)
    assert not (tmp_path / "s2").exists()  # the failed first run leaves no store behind


def test_no_row_is_written_before_a_new_model_is_checked(tmp_path):
    # a bound store indexed with another model: the mismatch is found before any change is committed
    files = make_images(tmp_path / "p", 3)
    store = tmp_path / "store"
    index_paths([tmp_path / "p"], store, model=MODEL, json_mode=True)
    files[0].unlink()
    with pytest.raises(PixdexError, match="bound to model"):
        index_paths([tmp_path / "p"], store, model="tiny-rn", json_mode=True)
    s = index_paths([tmp_path / "p"], store, json_mode=True)
    assert s["deleted"] == 1  # the failed run deleted nothing
