"""The ONNX Runtime backend (pixdex.encoders.onnx_backend, pixdex.encoders.backends): the same embeddings
as the float32 torch encoder (float32: max abs difference <= 1e-4; int8: cosine >= MIN_COSINE after the
first-batch check), the export cached per model in the user cache dir and reused, and the backend
reachable from ``pixdex index`` / ``pixdex embed``."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from index_support import make_images  # noqa: E402

from pixdex.encoders import backends, int8, onnx_backend  # noqa: E402
from pixdex.encoders.encoder import load_encoder  # noqa: E402
from pixdex.errors import PixdexError  # noqa: E402

TEXTS = ["a photo of a dog", "two cats on a red sofa", ""]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXDEX_CACHE_DIR", str(tmp_path / "cache"))


def _images(n, size, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def wide_model_dir(tmp_path_factory):
    """A model directory (as ``pixdex train`` writes it) with a ViT image tower wide enough for int8."""
    from pixdex.encoders.build import build_model
    from pixdex.encoders.config import (
        ModelConfig,
        PreprocessConfig,
        TextConfig,
        TokenizerConfig,
        VisionConfig,
    )
    from pixdex.training.state import write_model

    cfg = ModelConfig(
        name="wide-test",
        family="clip",
        embed_dim=128,
        vision=VisionConfig(image_size=64, patch_size=16, width=256, layers=2, heads=4),
        text=TextConfig(width=64, heads=2, layers=2, context_length=16),
    )
    cfg = cfg.replace(
        preprocess=PreprocessConfig(image_size=64), tokenizer=TokenizerConfig(context_length=16)
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("wide")
    write_model(out, build_model(cfg).eval(), cfg)
    return out


def test_onnx_float32_equals_torch_and_is_cached(tmp_path, monkeypatch):
    ref = load_encoder("tiny-vit", checkpoint="random", device="cpu")
    enc = load_encoder("tiny-vit", checkpoint="random", device="cpu")
    assert backends.apply_backend(enc, "onnx") == "onnx"
    x = _images(5, enc.image_size)
    assert np.abs(enc.encode_images(x) - ref.encode_images(x)).max() <= 1e-4
    assert np.abs(enc.encode_texts(TEXTS) - ref.encode_texts(TEXTS)).max() <= 1e-4
    folder = onnx_backend.export_dir(ref)
    assert folder.parent.parent == tmp_path / "cache"
    assert {"visual.onnx", "textual.onnx", "export.json"} <= {p.name for p in folder.iterdir()}
    # a second encoder of the same model reuses the export; other weights get their own folder
    import pixdex.encoders.onnx_export as onnx_export

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_encoder", no_export)
    again = load_encoder("tiny-vit", checkpoint="random", device="cpu", towers=("image",))
    backends.apply_backend(again, "onnx")
    assert np.abs(again.encode_images(x) - ref.encode_images(x)).max() <= 1e-4
    other = load_encoder("tiny-rn", checkpoint="random", device="cpu")
    assert onnx_backend.export_dir(other) != folder


def test_onnx_int8_checked_against_float32(wide_model_dir):
    ref = load_encoder(str(wide_model_dir), device="cpu", towers=("image",))
    enc = load_encoder(str(wide_model_dir), device="cpu", towers=("image",))
    assert backends.apply_backend(enc, "onnx-int8") == "onnx-int8"
    tower = enc.model.visual
    assert isinstance(tower, int8.CheckedTower)
    x = _images(12, enc.image_size, seed=1)
    want = ref.encode_images(x)
    first = enc.encode_images(x)
    assert tower.checked is True and tower.min_cosine >= int8.MIN_COSINE
    # the checked images keep float32 embeddings, the rest are int8 within the bar
    assert np.abs(first[: int8.CHECK_IMAGES] - want[: int8.CHECK_IMAGES]).max() <= 1e-5
    got = enc.encode_images(x)
    cos = (got * want).sum(1)
    assert cos.min() >= int8.MIN_COSINE
    assert np.abs(got - want).max() > 1e-6  # really the quantised path
    assert (onnx_backend.export_dir(ref) / onnx_backend.INT8_FILE).is_file()


def test_unknown_backend_and_exact_conflicts():
    with pytest.raises(PixdexError):
        backends.check_backend("tensorrt")
    with pytest.raises(PixdexError):
        backends.check_backend("onnx", exact=True)
    enc = load_encoder("tiny-vit", checkpoint="random", device="cpu", towers=("image",))
    visual = enc.model.visual
    assert backends.apply_backend(enc, "auto", exact=True) == "float32" and enc.model.visual is visual


def test_index_and_embed_with_the_onnx_backend(tmp_path):
    from pixdex.encoders.encoder import embed_one
    from pixdex.indexer.run import index_paths
    from pixdex.storage.store import Store

    photos = make_images(tmp_path / "photos", 3, size=(80, 60), ext="jpg")
    out = {}
    for backend in ("torch", "onnx"):
        store = tmp_path / f"store-{backend}"
        s = index_paths(
            [tmp_path / "photos"],
            store,
            model="tiny-vit",
            checkpoint="random",
            json_mode=True,
            backend=backend,
        )
        assert s["encoded"] == 3
        st = Store.open_readonly(store)
        try:
            ids, vecs = st.vectors(np.sort(st.live_ids()))
        finally:
            st.close()
        out[backend] = vecs
    assert np.abs(out["onnx"] - out["torch"]).max() <= 1e-4
    a = embed_one("tiny-vit", checkpoint="random", image=photos[0], device="cpu", backend="onnx")
    b = embed_one("tiny-vit", checkpoint="random", image=photos[0], device="cpu")
    assert np.abs(np.array(a["embedding"]) - np.array(b["embedding"])).max() <= 1e-4
    a = embed_one("tiny-vit", checkpoint="random", text="a dog", device="cpu", backend="onnx")
    b = embed_one("tiny-vit", checkpoint="random", text="a dog", device="cpu")
    assert np.abs(np.array(a["embedding"]) - np.array(b["embedding"])).max() <= 1e-4
    assert json.dumps(a)  # JSON-safe


def test_auto_picks_onnx_int8_for_wide_towers_and_falls_back(wide_model_dir, monkeypatch, caplog):
    tiny = load_encoder("tiny-vit", checkpoint="random", device="cpu", towers=("image",))
    assert backends.default_backend(tiny) == "torch"  # too narrow to gain from int8
    enc = load_encoder(str(wide_model_dir), device="cpu", towers=("image",))
    assert backends.default_backend(enc) == "onnx-int8"
    monkeypatch.setenv("PIXDEX_FAST", "0")
    assert backends.default_backend(enc) == "torch"
    monkeypatch.delenv("PIXDEX_FAST")

    def broken(*a, **k):
        raise PixdexError("exporter broke")

    monkeypatch.setattr(onnx_backend, "use_onnx", broken)
    assert backends.apply_backend(enc, "auto") == "int8"  # the torch int8 tower instead, with a warning
    assert isinstance(enc.model.visual, int8.Int8Tower)
    assert "exporter broke" in caplog.text
    with pytest.raises(PixdexError):  # named explicitly, the failure is the user's answer
        backends.apply_backend(load_encoder(str(wide_model_dir), device="cpu", towers=("image",)), "onnx")


def test_same_weights_from_another_file_reuse_the_export(tmp_path, monkeypatch):
    import shutil

    from safetensors.torch import save_file

    import pixdex.encoders.onnx_export as onnx_export

    ref = load_encoder("tiny-vit", checkpoint="random", device="cpu", towers=("image",))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, str(a))
    shutil.copyfile(a, b)
    backends.apply_backend(load_encoder("tiny-vit", checkpoint=a, device="cpu", towers=("image",)), "onnx")

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_encoder", no_export)
    enc = load_encoder("tiny-vit", checkpoint=b, device="cpu", towers=("image",))
    backends.apply_backend(enc, "onnx")
    x = _images(2, enc.image_size)
    assert np.abs(enc.encode_images(x) - ref.encode_images(x)).max() <= 1e-4
