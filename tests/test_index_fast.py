"""The int8 CPU image tower (pixdex.encoders.fast): embeddings within cosine 0.99 of float32 on real
photos, self-check with fallback, CPU only, thread policy restored."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from index_support import SHARED_DATA, make_images  # noqa: E402

from pixdex.encoders import fast  # noqa: E402
from pixdex.encoders.config import VisionConfig  # noqa: E402

SIZE = 224


def photos(tmp_path, n=12) -> np.ndarray:
    """Preprocessed real photos (synthetic ones when the shared data is absent)."""
    from pixdex.encoders.config import PreprocessConfig
    from pixdex.encoders.preprocess import Preprocessor
    from pixdex.images import decode, read_file

    files = sorted((SHARED_DATA / "photos").glob("*.jpg"))[:n] if SHARED_DATA.is_dir() else []
    if len(files) < n:
        files = make_images(tmp_path / "synthetic", n, size=(300, 240), ext="jpg")
    pre = Preprocessor(PreprocessConfig(image_size=SIZE))
    return np.stack([pre(decode(read_file(str(f)), SIZE)[0]) for f in files])


def vit(width=256, layers=3, qk_norm=False, layer_scale=None):
    from pixdex.encoders.vit import VisionTransformer

    torch.manual_seed(0)
    cfg = VisionConfig(
        image_size=SIZE,
        patch_size=32,
        width=width,
        layers=layers,
        heads=width // 64,
        qk_norm=qk_norm,
        layer_scale_init=layer_scale,
    )
    return VisionTransformer(cfg, 128).eval()


def encoder_of(visual, device="cpu"):
    return SimpleNamespace(model=SimpleNamespace(visual=visual), device=device)


@pytest.mark.parametrize("kind", ["plain", "qk_norm+layer_scale"])
def test_int8_tower_within_cosine_0_99_of_float32(tmp_path, kind):
    v = vit(qk_norm=kind != "plain", layer_scale=0.5 if kind != "plain" else None)
    x = torch.from_numpy(photos(tmp_path))
    with torch.inference_mode():
        ref = v(x)
        enc = encoder_of(v)
        assert fast.speed_up(enc)
        q = enc.model.visual
        first = q(x)  # first batch: 8 images compared with float32 (float32 returned for those)
        assert q.checked is True and q.min_cosine >= fast.MIN_COSINE
        assert torch.allclose(first[: fast.CHECK_IMAGES], ref[: fast.CHECK_IMAGES])
        got = q(x)  # then int8
        rest = torch.nn.functional.cosine_similarity(
            first[fast.CHECK_IMAGES :], got[fast.CHECK_IMAGES :], dim=-1
        )
        assert float(rest.min()) > 0.995  # int8 too (activation scales are per batch, so not bit-equal)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert float(cos.min()) >= 0.99
    assert not torch.allclose(got, ref)  # really the int8 path


def test_falls_back_to_float32_when_the_check_fails(tmp_path, monkeypatch):
    v = vit()
    x = torch.from_numpy(photos(tmp_path, 4))
    monkeypatch.setattr(fast, "MIN_COSINE", 1.01)  # unreachable: must fall back
    enc = encoder_of(v)
    assert fast.speed_up(enc)
    with torch.inference_mode():
        q = enc.model.visual
        q(x)
        assert q.checked is False
        assert torch.equal(q(x), v(x))


def test_only_on_cpu_and_only_for_wide_vits(monkeypatch):
    assert not fast.speed_up(encoder_of(vit(), device="cuda"))
    assert not fast.speed_up(encoder_of(vit(width=128)))  # too narrow to gain
    monkeypatch.setenv("PIXDEX_FAST", "0")
    assert not fast.speed_up(encoder_of(vit()))
    monkeypatch.delenv("PIXDEX_FAST")
    enc = encoder_of(vit())
    assert fast.speed_up(enc) and not fast.speed_up(enc)  # not twice


def test_cpu_threads_restores_the_setting():
    before = torch.get_num_threads()
    with fast.cpu_threads(encoder_of(vit(width=64, layers=1))) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with fast.cpu_threads(encoder_of(vit())) as n:
        assert n == before


def test_demo_model_stays_float32():
    """pixdex-demo's 128-wide tower is below the int8 threshold (dynamic int8 only pays on wide Linear
    layers): speed_up leaves it alone and its vectors are exactly the float32 ones."""
    from pixdex.encoders import registry

    if not registry.demo_weights_path().is_file():
        pytest.skip("pixdex-demo weights not present")
    from pixdex.encoders.encoder import load_encoder

    enc = load_encoder("pixdex-demo", device="cpu", towers=("image",))
    assert enc.model.visual.transformer.width < fast.MIN_WIDTH
    x = np.random.default_rng(0).standard_normal((4, 3, enc.image_size, enc.image_size)).astype(np.float32)
    ref = enc.encode_images(x)
    assert not fast.speed_up(enc) and not fast.is_quantized(enc.model.visual)
    assert np.array_equal(enc.encode_images(x), ref)
