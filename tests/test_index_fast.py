"""The int8 CPU image tower (pixdex.encoders.int8): the float tower's own modules with only Linear layers
quantised, embeddings within cosine 0.99 of float32 on real photos, self-check with fallback, CPU only;
the torch thread policy restored (pixdex.threads)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from index_support import SHARED_DATA, make_images  # noqa: E402

from pixdex.encoders import int8  # noqa: E402
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


def test_int8_tower_is_the_float_towers_own_modules_with_quantised_linears():
    """The int8 path runs the model's own forward code: same module tree, same classes (so the same
    ``forward`` functions), the same float tensors; only ``nn.Linear`` -> dynamic int8 Linear, plus the
    attention's in-projection slot filled with one. A re-implemented forward fails this test."""
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    from pixdex.encoders.layers import MultiheadAttention

    v = vit(qk_norm=True, layer_scale=0.5)
    enc = encoder_of(v)
    assert int8.speed_up(enc)
    tower = enc.model.visual
    assert tower.float_visual is v
    q = tower.int8_visual
    assert type(q) is type(v) and q is not v
    float_modules = dict(v.named_modules())
    int8_modules = dict(q.named_modules())
    qlinears = [n for n, m in int8_modules.items() if type(m) is QLinear]
    int8_modules = {  # a quantised Linear's own internals (its packed weights) are not the model's
        n: m for n, m in int8_modules.items() if not any(n.startswith(f"{ql}.") for ql in qlinears)
    }
    in_projs = {f"transformer.resblocks.{i}.attn.in_proj" for i in range(len(v.transformer.resblocks))}
    assert set(int8_modules) == set(float_modules) | in_projs
    for name, m in int8_modules.items():
        if name in in_projs:
            assert type(m) is QLinear
        elif type(float_modules[name]) is torch.nn.Linear:
            assert type(m) is QLinear, name
        else:
            assert type(m) is type(float_modules[name]), name
            assert type(m).forward is type(float_modules[name]).forward
    n_linear = sum(type(m) is torch.nn.Linear for m in v.modules())
    assert int8.count_quantized(q) == n_linear + len(in_projs) == 4 * len(v.transformer.resblocks)
    # every float tensor is shared, not copied: a change to the model reaches both paths
    assert {id(p) for p in q.parameters()} <= {id(p) for p in v.parameters()}
    assert all(getattr(q, n) is getattr(v, n) for n in ("class_embedding", "positional_embedding", "proj"))
    assert all(m.in_proj is None for m in v.modules() if isinstance(m, MultiheadAttention))  # float untouched
    # the model's state dict is still the float tower's (nothing quantised leaks into exports)
    assert list(tower.state_dict()) == [f"float_visual.{k}" for k in v.state_dict()]


def test_a_change_to_the_models_forward_reaches_the_int8_path(tmp_path, monkeypatch):
    """Patch the block's forward (as a code change would: here each block reverses the token order first):
    float32 and int8 outputs both change alike."""
    from pixdex.encoders.layers import ResidualAttentionBlock

    v = vit()
    x = torch.from_numpy(photos(tmp_path, 4))
    enc = encoder_of(v)
    assert int8.speed_up(enc)
    q = enc.model.visual.int8_visual
    with torch.inference_mode():
        before_f, before_q = v(x), q(x)
        original = ResidualAttentionBlock.forward
        monkeypatch.setattr(
            ResidualAttentionBlock, "forward", lambda self, h, **kw: original(self, h.flip(1), **kw)
        )
        after_f, after_q = v(x), q(x)
    cos = torch.nn.functional.cosine_similarity
    assert float(cos(after_f, before_f, dim=-1).max()) < 0.99  # the patch matters
    assert float(cos(after_q, after_f, dim=-1).min()) > 0.99  # and int8 follows it
    assert float(cos(before_q, before_f, dim=-1).min()) > 0.99


@pytest.mark.parametrize("kind", ["plain", "qk_norm+layer_scale"])
def test_int8_tower_within_cosine_0_99_of_float32(tmp_path, kind):
    v = vit(qk_norm=kind != "plain", layer_scale=0.5 if kind != "plain" else None)
    x = torch.from_numpy(photos(tmp_path))
    with torch.inference_mode():
        ref = v(x)
        enc = encoder_of(v)
        assert int8.speed_up(enc)
        q = enc.model.visual
        first = q(x)  # first batch: 8 images compared with float32 (float32 returned for those)
        assert q.checked is True and q.min_cosine >= int8.MIN_COSINE
        assert torch.allclose(first[: int8.CHECK_IMAGES], ref[: int8.CHECK_IMAGES])
        got = q(x)  # then int8
        rest = torch.nn.functional.cosine_similarity(
            first[int8.CHECK_IMAGES :], got[int8.CHECK_IMAGES :], dim=-1
        )
        assert float(rest.min()) > 0.995  # int8 too (activation scales are per batch, so not bit-equal)
    cos = torch.nn.functional.cosine_similarity(got, ref, dim=-1)
    assert float(cos.min()) >= 0.99
    assert not torch.allclose(got, ref)  # really the int8 path


def test_falls_back_to_float32_when_the_check_fails(tmp_path, monkeypatch):
    v = vit()
    x = torch.from_numpy(photos(tmp_path, 4))
    monkeypatch.setattr(int8, "MIN_COSINE", 1.01)  # unreachable: must fall back
    enc = encoder_of(v)
    assert int8.speed_up(enc)
    with torch.inference_mode():
        q = enc.model.visual
        q(x)
        assert q.checked is False
        assert torch.equal(q(x), v(x))


def test_only_on_cpu_and_only_for_wide_vits(monkeypatch):
    assert not int8.speed_up(encoder_of(vit(), device="cuda"))
    assert not int8.speed_up(encoder_of(vit(width=128)))  # too narrow to gain
    monkeypatch.setenv("PIXDEX_FAST", "0")
    assert not int8.speed_up(encoder_of(vit()))
    monkeypatch.delenv("PIXDEX_FAST")
    enc = encoder_of(vit())
    assert int8.speed_up(enc) and not int8.speed_up(enc)  # not twice


def test_cpu_threads_restores_the_setting():
    from pixdex.threads import cpu_threads

    def encoder(width):
        return SimpleNamespace(config=SimpleNamespace(vision=VisionConfig(width=width)))

    before = torch.get_num_threads()
    with cpu_threads(encoder(64)) as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(encoder(256)) as n:
        assert n == before
    with cpu_threads(
        SimpleNamespace(config=SimpleNamespace(vision=VisionConfig(kind="resnet", width=64)))
    ) as n:
        assert n == before  # only transformer towers


def test_demo_model_stays_float32():
    """pixdex-demo's 128-wide tower is below the int8 threshold (dynamic int8 only pays on wide Linear
    layers): speed_up leaves it alone and its vectors are exactly the float32 ones."""
    from pixdex.encoders import registry

    if not registry.demo_weights_path().is_file():
        pytest.skip("pixdex-demo weights not present")
    from pixdex.encoders.encoder import load_encoder

    enc = load_encoder("pixdex-demo", device="cpu", towers=("image",))
    assert enc.model.visual.transformer.width < int8.MIN_WIDTH
    x = np.random.default_rng(0).standard_normal((4, 3, enc.image_size, enc.image_size)).astype(np.float32)
    ref = enc.encode_images(x)
    assert not int8.speed_up(enc) and not int8.is_quantized(enc.model.visual)
    assert np.array_equal(enc.encode_images(x), ref)


def test_siglip_image_tower_gets_int8_too(tmp_path):
    """SigLIP's image tower (the same blocks plus an attention-pooling head) takes the int8 path, within
    the check's bar of float32 on real photos."""
    from pixdex.encoders.siglip import SigLIPVisionTower

    torch.manual_seed(0)
    v = SigLIPVisionTower(
        VisionConfig(kind="siglip", image_size=SIZE, patch_size=32, width=256, layers=2, heads=4)
    )
    v.eval()
    x = torch.from_numpy(photos(tmp_path))
    enc = encoder_of(v)
    assert int8.speed_up(enc)
    with torch.inference_mode():
        ref = v(x)
        enc.model.visual(x)
        assert enc.model.visual.checked is True
        got = enc.model.visual(x)
    assert int8.count_quantized(enc.model.visual.int8_visual) > 0
    assert float(torch.nn.functional.cosine_similarity(got, ref, dim=-1).min()) >= int8.MIN_COSINE
