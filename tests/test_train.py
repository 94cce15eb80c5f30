"""Manifests, the schedule, and `pixdex train` end to end with a tiny model: outputs load everywhere,
training lowers the loss, and a run killed with SIGKILL resumes exactly where it stopped."""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from pixdex.errors import PixdexError
from pixdex.training import state as st
from pixdex.training.demo_data import generate
from pixdex.training.manifest import read_manifest
from pixdex.training.trainer import TrainOptions, lr_factor, param_groups, train

torch = pytest.importorskip("torch")

TINY = "tiny-vit"  # registry test config: 32 px ViT, 2 layers, width 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "data"
    generate(out, n=40, seed=11, image_size=48)
    return out


def _opts(demo, out, **kw):
    base = dict(
        data=demo / "manifest.csv",
        model=TINY,
        out=out,
        epochs=1,
        batch_size=8,
        lr=1e-3,
        warmup=1,
        val_fraction=0.2,
        seed=0,
        workers=1,
        device="cpu",
        progress=False,
        save_every=1,
    )
    base.update(kw)
    return TrainOptions(**base)


# ----------------------------------------------------------------------------- manifests


def test_rows_of_one_image_are_its_alternative_captions(demo):
    """COCO-style manifests: an image's rows are grouped into one training item (so it is split as a
    whole and never twice in a batch) and each epoch draws one of its captions, deterministically and
    evenly."""
    from pixdex.training.data import caption_draw, group_by_image

    rows = read_manifest(demo / "manifest.csv")
    images, caption_rows = group_by_image(rows)
    assert [s.path for s in images] == sorted({r.path for r in rows}) and len(images) == 40
    assert sorted(int(i) for r in caption_rows for i in r) == list(range(len(rows)))
    for s, r in zip(images, caption_rows):
        assert {rows[i].path for i in r} == {s.path} and rows[r[0]] == s
    draws = np.stack([caption_draw(caption_rows, seed=0, epoch=e) for e in range(400)])
    assert (draws == np.stack([caption_draw(caption_rows, seed=0, epoch=e) for e in range(400)])).all()
    assert not (draws[0] == caption_draw(caption_rows, seed=1, epoch=0)).all()
    for k, r in enumerate(caption_rows):
        counts = np.array([(draws[:, k] == i).sum() for i in r])
        assert counts.sum() == 400  # always one of its own rows
        assert counts.min() > 400 / len(r) * 0.6  # every caption gets its turn


def test_manifest_formats_agree(demo, tmp_path):
    rows = read_manifest(demo / "manifest.csv")
    assert (
        len({r.path for r in rows}) == 40 < len(rows) and rows[0].path == (demo / "img_00000.png").resolve()
    )
    jl = demo / "m.jsonl"
    jl.write_text("".join(json.dumps({"file": str(r.path), "text": r.caption}) + "\n" for r in rows))
    assert [(r.path, r.caption) for r in read_manifest(jl, "file", "text")] == [
        (r.path, r.caption) for r in rows
    ]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"image": [r.path.name for r in rows], "caption": [r.caption for r in rows]}),
        demo / "m.parquet",
    )
    assert [(r.path, r.caption) for r in read_manifest(demo / "m.parquet")] == [
        (r.path, r.caption) for r in rows
    ]
    jl.unlink()
    (demo / "m.parquet").unlink()


@pytest.mark.parametrize(
    "body,match",
    [
        (
            "image,caption\nimg_00000.png,a red circle\nmissing.png,a cat\n",
            r"row 2 \(line 3\): image file .*missing.png",
        ),
        ("image,caption\nimg_00000.png,\n", r"row 1 \(line 2\): empty or non-text caption"),
        ("image,caption\nimg_00000.png,a,b\n", r"row 1 \(line 2\): 3 fields, the header has 2"),
        ("path,caption\nimg_00000.png,x\n", r"no column 'image' \(columns: path, caption"),
        ("image,caption\n", r"has no rows"),
    ],
)
def test_bad_csv_rows_are_named(demo, body, match):
    p = demo / "bad.csv"
    p.write_text(body)
    try:
        with pytest.raises(PixdexError, match=match):
            read_manifest(p)
    finally:
        p.unlink()


def test_bad_jsonl_row_is_named(demo):
    p = demo / "bad.jsonl"
    p.write_text('{"image": "img_00000.png", "caption": "a"}\n\n{"image": "img_00001.png", "caption": \n')
    try:
        with pytest.raises(PixdexError, match=r"row 2 \(line 3\): bad JSON"):
            read_manifest(p)
    finally:
        p.unlink()


def test_undecodable_image_names_its_row(demo, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "m.csv").write_text(
        "image,caption\n" + "".join(f"{demo}/img_{i:05d}.png,x{i}\n" for i in range(5)) + "broken.png,a cat\n"
    )
    with pytest.raises(PixdexError, match=r"manifest row 6: cannot decode image .*broken.png"):
        train(_opts(demo, tmp_path / "out", data=tmp_path / "m.csv"))


# ----------------------------------------------------------------------------- schedule, groups


def test_schedule_warms_up_then_decays_to_zero():
    f = [lr_factor(s, 10, 110) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert (
        f[10] == pytest.approx(1.0)
        and f[60] == pytest.approx(0.5)
        and f[110] == pytest.approx(0.0, abs=1e-12)
    )
    assert all(a >= b for a, b in zip(f[10:], f[11:]))


def test_no_weight_decay_on_gains_biases_embeddings_logits():
    from pixdex.encoders.build import build_model
    from pixdex.encoders.registry import get_config

    model = build_model(get_config(TINY))
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    dn = {names[id(p)] for p in decay["params"]}
    nn_ = {names[id(p)] for p in no_decay["params"]}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert {
        "token_embedding.weight",
        "positional_embedding",
        "visual.class_embedding",
        "logit_scale",
        "ln_final.weight",
        "ln_final.bias",
        "visual.positional_embedding",
    } <= nn_
    assert "text_projection" in dn and "visual.conv1.weight" in dn
    assert all(not n.endswith(".bias") for n in dn)


# ----------------------------------------------------------------------------- end to end


def test_train_writes_a_loadable_model_and_lowers_the_loss(demo, tmp_path):
    from pixdex.encoders.config import ModelConfig
    from pixdex.encoders.encoder import load_encoder
    from pixdex.encoders.registry import get_config

    out = tmp_path / "run"
    summary = train(_opts(demo, out, epochs=6, batch_size=16, lr=3e-3, warmup=2, save_every=100))
    assert summary["steps"] == 6 * 2  # 32 training pairs -> 2 batches of 16 per epoch
    cfg = json.loads((out / "config.json").read_text())
    assert ModelConfig.from_dict(cfg) == get_config(TINY)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["epochs"]) == 6 and metrics["done"]
    for e in metrics["epochs"]:
        assert set(e["val"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
        assert all(0.0 <= v <= 1.0 for v in e["val"].values())
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]
    enc = load_encoder(str(out), device="cpu")
    x = np.zeros((2, 3, enc.image_size, enc.image_size), np.float32)
    assert enc.encode_images(x).shape == (2, enc.dim)
    # --model NAME --checkpoint OUT/model.safetensors gives the same model
    enc2 = load_encoder(TINY, checkpoint=out / "model.safetensors", device="cpu")
    texts = ["a red circle", "a blue star"]
    assert np.allclose(enc.encode_texts(texts), enc2.encode_texts(texts), atol=1e-6)
    assert not np.allclose(
        enc.encode_texts(texts), load_encoder(TINY, device="cpu").encode_texts(texts), atol=1e-3
    )
    # the learned temperature is written into the model
    saved = torch.load(out / st.RESUME_FILE, weights_only=True)
    assert float(enc.model.logit_scale) == pytest.approx(float(saved["loss"]["logit_scale"]))
    assert float(enc.model.logit_scale) != pytest.approx(math.log(1 / 0.07))
    # the same command again: the run is finished, nothing changes
    before = (out / "model.safetensors").read_bytes()
    assert train(_opts(demo, out, epochs=6, batch_size=16, lr=3e-3, warmup=2, save_every=100))["done"]
    assert (out / "model.safetensors").read_bytes() == before
    # other options for the same --out are refused
    with pytest.raises(PixdexError, match="other options.*lr"):
        train(_opts(demo, out, epochs=6, batch_size=16, lr=1e-3, warmup=2, save_every=100))
    # and an --init from it starts where it ended (fine-tuning path)
    ft = train(_opts(demo, tmp_path / "ft", init=out, loss="siglip", max_steps=1))
    assert ft["steps"] == 1 and (tmp_path / "ft" / "model.safetensors").is_file()


def test_out_dir_with_a_foreign_model_is_refused(demo, tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"precious")
    with pytest.raises(PixdexError, match="did not write"):
        train(_opts(demo, tmp_path))
    assert (tmp_path / "model.safetensors").read_bytes() == b"precious"


KILLABLE = textwrap.dedent("""
    import sys, time
    from pixdex.training import state
    real = state.save_resume
    def save_then_hang(out, s):
        real(out, s)
        if not s["done"]:
            time.sleep(600)  # the test kills us here, right after the first checkpoint
    state.save_resume = save_then_hang
    from pixdex.cli import main
    sys.argv = ["pixdex"] + sys.argv[1:]
    main()
""")


def test_killed_run_resumes_from_its_last_step(demo, tmp_path, monkeypatch):
    out = tmp_path / "killed"
    args = [
        "train",
        "--data",
        str(demo / "manifest.csv"),
        "--model",
        TINY,
        "--out",
        str(out),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "1e-3",
        "--warmup",
        "1",
        "--val-fraction",
        "0.2",
        "--workers",
        "1",
        "--device",
        "cpu",
        "--save-every",
        "1",
    ]
    script = tmp_path / "killable.py"
    script.write_text(KILLABLE)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(script)] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.time() + 240
        while not (out / st.RESUME_FILE).exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(out / st.RESUME_FILE, weights_only=True)
    assert state["step"] == 1 and not state["done"]
    assert not (out / "model.safetensors").exists()  # no epoch finished yet

    # the same command again continues at step 2: only that step is saved
    saved_steps = []
    real = st.save_resume
    monkeypatch.setattr(st, "save_resume", lambda o, s: (saved_steps.append(s["step"]), real(o, s)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from typer.testing import CliRunner

        from pixdex.cli import app

        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.output
        assert saved_steps == [2]

        # equal to a run that was never interrupted
        monkeypatch.setattr(st, "save_resume", real)
        straight = tmp_path / "straight"
        res = CliRunner().invoke(app, [a if a != str(out) else str(straight) for a in args])
        assert res.exit_code == 0, res.output
    finally:
        torch.set_num_threads(threads)
    from safetensors.torch import load_file

    a, b = load_file(out / "model.safetensors"), load_file(straight / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (out, straight))
    assert ma["steps"] == mb["steps"] == 2
    assert ma["epochs"][0]["val"] == mb["epochs"][0]["val"]
    # the epoch's mean loss counts the steps before the kill too
    assert ma["epochs"][0]["train_loss"] == pytest.approx(mb["epochs"][0]["train_loss"], rel=1e-5)
