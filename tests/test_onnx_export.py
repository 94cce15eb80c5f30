"""ONNX export: the exported towers, run by ONNX Runtime, equal pixdex's torch towers (float32, max abs
difference <= 1e-4 on L2-normalised embeddings) for every family (CLIP ViT, ModifiedResNet, SigLIP), at
batch sizes other than the one traced; export.json describes the preprocessing and tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from pixdex.encoders.encoder import load_encoder  # noqa: E402
from pixdex.encoders.onnx_export import FILES, INPUTS, MANIFEST, export_encoder  # noqa: E402

ATOL = 1e-4
TEXTS = ["a photo of a dog", "Zürich at night, a very long caption " * 8, ""]


def _run(path, name, x) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {name: x})[0]


def _torch_text(enc, ids: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        f = enc.model.encode_text(torch.from_numpy(ids))
    return torch.nn.functional.normalize(f.float(), dim=-1).numpy()


def _random_ids(enc, n: int, seed: int) -> np.ndarray:
    """Token ids as a tokenizer pads them: a start, random tokens, the end token (highest id), zeros."""
    rng = np.random.default_rng(seed)
    ctx, vocab = enc.config.text.context_length, enc.config.text.vocab_size
    ids = np.zeros((n, ctx), dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(1, ctx - 1))
        ids[i, 0] = vocab - 2
        ids[i, 1 : k + 1] = rng.integers(1, vocab - 2, size=k)
        ids[i, k + 1] = vocab - 1
    return ids


def _check_export(enc, out, fp16=False, towers=("image", "text")):
    meta = export_encoder(enc, out, towers=towers, fp16=fp16)
    s = enc.image_size
    tol = ATOL if not fp16 else 5e-3
    for n in (1, 3):  # the trace used a batch of 2: the batch dimension is dynamic
        if "image" in towers:
            x = np.random.default_rng(n).standard_normal((n, 3, s, s)).astype(np.float32)
            got = _run(out / FILES["image"], INPUTS["image"], x)
            assert got.shape == (n, enc.dim)
            assert np.abs(got - enc.encode_images(x)).max() <= tol
        if "text" in towers:
            ids = _random_ids(enc, n, seed=n)
            got = _run(out / FILES["text"], INPUTS["text"], ids)
            assert np.abs(got - _torch_text(enc, ids)).max() <= tol
    return meta


def test_tiny_families_match_torch(tmp_path):
    for name in ("tiny-vit", "tiny-rn", "tiny-siglip"):
        enc = load_encoder(name, checkpoint="random", device="cpu")
        _check_export(enc, tmp_path / name)


def test_manifest_and_tokenizer_file(tmp_path):
    from pixdex.encoders.tokenizer import ClipTokenizer

    enc = load_encoder("tiny-vit", checkpoint="random", device="cpu")
    _check_export(enc, tmp_path)
    meta = json.loads((tmp_path / MANIFEST).read_text())
    cfg = enc.config
    assert meta["embed_dim"] == enc.dim and meta["normalized"] is True
    assert meta["preprocess"]["size"] == cfg.preprocess.image_size
    assert meta["preprocess"]["mean"] == list(cfg.preprocess.mean)
    assert meta["preprocess"]["std"] == list(cfg.preprocess.std)
    assert meta["preprocess"]["resize_mode"] == cfg.preprocess.resize_mode
    assert meta["preprocess"]["interpolation"] == cfg.preprocess.interpolation
    assert meta["context_length"] == cfg.text.context_length
    assert meta["identity"] == enc.identity()
    assert meta["opset"] >= 18
    # the copied vocabulary tokenizes as the encoder does, and its ids through textual.onnx give the
    # encoder's text embeddings
    tok = ClipTokenizer(cfg.text.context_length, bpe_path=tmp_path / meta["tokenizer"]["file"])
    ids = tok(TEXTS)
    assert np.array_equal(ids, enc.tokenizer(TEXTS))
    got = _run(tmp_path / meta["towers"]["text"]["file"], meta["towers"]["text"]["input"], ids)
    assert np.abs(got - enc.encode_texts(TEXTS)).max() <= ATOL


def test_fp16_weights(tmp_path):
    enc = load_encoder("tiny-vit", checkpoint="random", device="cpu")
    meta = _check_export(enc, tmp_path, fp16=True)
    assert meta["fp16_weights"] is True
    import onnx

    m = onnx.load(str(tmp_path / FILES["image"]))
    dtypes = {i.data_type for i in m.graph.initializer if len(i.dims) >= 2}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_cli_one_tower_and_errors(tmp_path):
    import os
    import subprocess
    import sys

    from typer.testing import CliRunner

    from pixdex.cli import app

    out = tmp_path / "x"
    args = ["export-model", "--model", "tiny-rn", "--checkpoint", "random", "--out", str(out)]
    r = CliRunner().invoke(app, [*args, "--towers", "image", "--json"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in out.iterdir()) == sorted([FILES["image"], MANIFEST])
    assert list(json.loads(r.output)["towers"]) == ["image"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for bad in (["--towers", "audio"], ["--format", "tflite"], ["--opset", "11"]):
        p = subprocess.run(
            [sys.executable, "-m", "pixdex", *args, *bad],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("pixdex: error: "), p.stderr


@pytest.mark.slow
@pytest.mark.timeout(900)
# RN50's text tower is ViT-B-32's (same config): its image tower is the part a ResNet adds
@pytest.mark.parametrize(
    "name,towers",
    [("ViT-B-32", ("image", "text")), ("RN50", ("image",)), ("ViT-B-16-SigLIP", ("image", "text"))],
)
def test_full_size_families_match_torch(tmp_path, name, towers):
    enc = load_encoder(name, checkpoint="random", device="cpu", towers=towers)
    _check_export(enc, tmp_path, towers=towers)
