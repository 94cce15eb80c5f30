"""The numpy text towers equal the torch ones (~1e-5), and the exported tower round-trips through a store."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pixdex.encoders.numpy_text import NumpyTextTower, read_safetensors, write_safetensors
from pixdex.encoders.textexport import canonical_text_weights
from pixdex.errors import PixdexError


def _ids(rng, n, ctx, vocab, eot):
    ids = np.zeros((n, ctx), np.int64)
    for i in range(n):
        length = int(rng.integers(2, ctx + 1))
        ids[i, 0] = eot - 1
        ids[i, 1 : length - 1] = rng.integers(1, eot - 1, length - 2)
        ids[i, length - 1] = eot
    return ids


def _tower_of(model, cfg):
    from pixdex.encoders.text import TEXT_KEY_PREFIXES

    state = {k: v for k, v in model.state_dict().items() if k.startswith(TEXT_KEY_PREFIXES)}
    return NumpyTextTower(
        canonical_text_weights(state),
        kind=cfg.text.kind,
        heads=cfg.text.heads,
        act=cfg.text.act,
        ln_eps=cfg.text.ln_eps,
    )


@pytest.mark.parametrize("name", ["tiny-vit", "pixdex-demo"])
def test_clip_tower_equals_torch(name):
    from pixdex.encoders.build import build_model
    from pixdex.encoders.registry import get_config

    cfg = get_config(name)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # LayerNorm and bias parameters start at 1/0: perturb them so they matter
        for n, p in model.named_parameters():
            if "ln" in n or n.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    rng = np.random.default_rng(0)
    ids = _ids(rng, 6, cfg.text.context_length, cfg.text.vocab_size, cfg.text.vocab_size - 1)
    with torch.no_grad():
        ref = model.encode_text(torch.from_numpy(ids)).float().numpy()
    got = _tower_of(model, cfg).features(ids)
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(got, ref, atol=1e-5 * max(1.0, np.abs(ref).max()))
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(_tower_of(model, cfg).encode_ids(ids), norm(ref), atol=1e-5)
    # batch composition never changes a row (the sequence is cut at the batch's last EOT)
    np.testing.assert_allclose(_tower_of(model, cfg).features(ids[2:3]), got[2:3], atol=1e-5)


def test_siglip_tower_equals_pixdex_torch_tower():
    from pixdex.encoders.build import build_model
    from pixdex.encoders.registry import get_config

    cfg = get_config("tiny-siglip")
    torch.manual_seed(3)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.startswith("text.") and ("ln" in n or n.endswith("bias")):
                p.add_(0.1 * torch.randn_like(p))
    tower = NumpyTextTower(
        canonical_text_weights(model.text_state_dict()),
        kind="siglip",
        heads=cfg.text.heads,
        act=cfg.text.act,
        ln_eps=cfg.text.ln_eps,
    )
    ids = np.random.default_rng(4).integers(2, cfg.text.vocab_size, (5, cfg.text.context_length))
    ids[:, 9:] = cfg.text.pad_id
    with torch.no_grad():
        ref = model.encode_text(torch.from_numpy(ids)).numpy()
    assert np.abs(ref).max() > 0.5
    np.testing.assert_allclose(tower.features(ids), ref, atol=1e-5 * max(1.0, np.abs(ref).max()))


def test_safetensors_roundtrip_and_compat(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    t = {
        "a": rng.normal(size=(3, 5)).astype(np.float32),
        "b": np.arange(7, dtype=np.int64),
        "c": rng.normal(size=(2,)).astype(np.float16),
    }
    write_safetensors(tmp_path / "x.safetensors", t, metadata={"k": 1})
    ref = load_file(str(tmp_path / "x.safetensors"))
    for k in t:
        np.testing.assert_array_equal(ref[k], t[k])
        np.testing.assert_array_equal(read_safetensors(tmp_path / "x.safetensors")[k], t[k])
    save_file({"w": t["a"]}, str(tmp_path / "y.safetensors"))  # and the reverse direction
    np.testing.assert_array_equal(read_safetensors(tmp_path / "y.safetensors", mmap=False)["w"], t["a"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(PixdexError):
        read_safetensors(tmp_path / "bad.safetensors")


def test_bad_weights_and_ids_are_clear_errors():
    from pixdex.encoders.build import build_model
    from pixdex.encoders.registry import get_config
    from pixdex.encoders.text import TEXT_KEY_PREFIXES

    cfg = get_config("tiny-vit")
    state = {k: v for k, v in build_model(cfg).state_dict().items() if k.startswith(TEXT_KEY_PREFIXES)}
    with pytest.raises(PixdexError, match="unexpected"):
        canonical_text_weights({**state, "transformer.resblocks.0.ls_1.gamma": np.ones(3)})
    with pytest.raises(PixdexError, match="missing"):
        canonical_text_weights({k: v for k, v in state.items() if "resblocks.1.mlp.c_fc.bias" not in k})
    tower = NumpyTextTower(canonical_text_weights(state), heads=cfg.text.heads)
    with pytest.raises(PixdexError, match="vocabulary"):
        tower.features(np.array([[1, cfg.text.vocab_size]]))
    with pytest.raises(PixdexError):
        tower.features(np.zeros(5, np.int64))


@pytest.mark.parametrize("name", ["tiny-vit", "pixdex-demo"])
def test_export_and_load_through_a_store(tmp_path, name):
    enc_mod = pytest.importorskip("pixdex.encoders.encoder")
    from pixdex.encoders.registry import demo_weights_path
    from pixdex.encoders.textexport import export_text_tower, load_text_encoder
    from pixdex.storage.contract import TEXT_TOWER_FILE, TEXT_TOWER_META

    if name == "pixdex-demo" and not demo_weights_path().is_file():
        pytest.skip("pixdex-demo weights are not shipped yet")
    enc = enc_mod.load_encoder(name, device="cpu")
    export_text_tower(enc, tmp_path)
    meta = json.loads((tmp_path / TEXT_TOWER_META).read_text())
    assert meta["identity"]["model"] == enc.identity()["model"]
    texts = ["a red circle", "a photo of a dog on a beach", "", "x" * 500]
    te = load_text_encoder(tmp_path, enc.identity())
    np.testing.assert_allclose(te.encode_texts(texts), enc.encode_texts(texts), atol=1e-5)
    mtime = (tmp_path / TEXT_TOWER_FILE).stat().st_mtime_ns
    export_text_tower(enc, tmp_path)  # same model: nothing rewritten
    assert (tmp_path / TEXT_TOWER_FILE).stat().st_mtime_ns == mtime
    other = dict(enc.identity(), checkpoint_sha256="something-else")
    assert load_text_encoder(tmp_path, other) is None


def test_siglip_export_carries_its_tokenizer(tmp_path):
    """A SigLIP store answers text queries offline: the sentencepiece model is copied into the store."""
    pytest.importorskip("sentencepiece")
    from encoder_support import train_spiece
    from safetensors.torch import save_file

    from pixdex.encoders.build import build_model
    from pixdex.encoders.encoder import load_encoder
    from pixdex.encoders.registry import get_config
    from pixdex.encoders.textexport import export_text_tower, load_text_encoder

    cfg = get_config("tiny-siglip")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    words = [
        "a photo of a dog",
        "the red car",
        "two cats on a sofa",
        "mountain lake at sunset",
        "city street",
    ]
    sp_model = train_spiece(words * 40)
    (ckpt / "spiece.model").write_bytes(sp_model)
    torch.manual_seed(5)
    save_file(
        {k: v.contiguous() for k, v in build_model(cfg).state_dict().items()}, str(ckpt / "model.safetensors")
    )
    enc = load_encoder("tiny-siglip", checkpoint=ckpt / "model.safetensors", device="cpu")
    store = tmp_path / "store"
    export_text_tower(enc, store)
    assert (store / "spiece.model").read_bytes() == sp_model
    (ckpt / "spiece.model").unlink()  # the checkpoint's copy is gone: the store's own copy is used
    te = load_text_encoder(store, enc.identity())
    texts = ["A photo of a DOG!", "two cats", "", "sunset " * 20]
    np.testing.assert_allclose(te.encode_texts(texts), enc.encode_texts(texts), atol=1e-5)
