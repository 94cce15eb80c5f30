"""Checkpoint formats, strict loading with one clear error, towers, model directories and identities."""

import hashlib
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

from pixdex.encoders.build import build_model  # noqa: E402
from pixdex.encoders.checkpoint import load_checkpoint, read_state_dict  # noqa: E402
from pixdex.encoders.checksum import file_sha256  # noqa: E402
from pixdex.encoders.encoder import load_encoder  # noqa: E402
from pixdex.encoders.registry import get_config  # noqa: E402
from pixdex.errors import PixdexError  # noqa: E402

TEXTS = ["a red square", "two dogs playing in the snow"]


@pytest.fixture(autouse=True)
def _hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PIXDEX_CACHE_DIR", str(tmp_path / "cache"))


def _model(name="tiny-vit", seed=3):
    torch.manual_seed(seed)
    m = build_model(get_config(name)).eval()
    with torch.no_grad():  # make constant-initialised vectors random too
        for p in m.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn_like(p) * 0.1)
    return m


def _save(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def _outputs(model, size):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    from pixdex.encoders.tokenizer import get_tokenizer

    ids = torch.from_numpy(get_tokenizer(get_config("tiny-vit"))(TEXTS))
    with torch.no_grad():
        return x, ids, model.encode_image(x), model.encode_text(ids)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_roundtrip_safetensors_and_identity(name, tmp_path):
    ref = _model(name)
    path = _save(ref.state_dict(), tmp_path / "w.safetensors")
    enc = load_encoder(name, checkpoint=path, device="cpu")
    x, ids, img, txt = _outputs(ref, enc.image_size)
    with torch.no_grad():
        assert torch.equal(enc.model.encode_image(x), img)
        assert torch.equal(enc.model.encode_text(ids), txt)
    out = enc.encode_texts(TEXTS)
    assert out.dtype == np.float32 and out.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    ident = enc.identity()
    assert ident["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ident["dim"] == 32 and ident["model"] == name and ident["checkpoint"] == str(path.resolve())
    assert ident["preprocess"]["image_size"] == enc.image_size


def test_nested_state_dict_with_module_prefix(tmp_path):
    ref = _model()
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 1, "model": {f"module.{k}": v for k, v in ref.state_dict().items()}}, path)
    sd = read_state_dict(path)
    assert "module.visual.proj" in sd
    m = build_model(get_config("tiny-vit"))
    load_checkpoint(m, path, get_config("tiny-vit"))
    assert torch.equal(m.visual.proj, ref.visual.proj)


def test_wrappers_and_layouts_are_one_rule():
    from pixdex.encoders.state_dict_layout import detect_layout, strip_wrappers, unwrap_nested, wrapper_prefix

    t = object()
    inner = {"visual.proj": t}
    assert unwrap_nested({"epoch": 3, "state_dict": {"module": inner}}) is inner
    assert unwrap_nested(inner) is inner
    # stacked wrappers go, in any combination, but only when every key carries them
    keys = ["module._orig_mod.model.visual.proj", "module._orig_mod.model.logit_scale"]
    assert wrapper_prefix(keys) == "module._orig_mod.model."
    assert strip_wrappers(dict.fromkeys(keys, t)) == {"visual.proj": t, "logit_scale": t}
    mixed = {"module.visual.proj": t, "logit_scale": t}
    assert strip_wrappers(mixed) == mixed and wrapper_prefix(mixed) == ""
    assert wrapper_prefix([]) == ""
    # layout detection sees through the same wrappers
    for wrap in ("", "module.", "_orig_mod.model."):
        assert detect_layout([wrap + "vision_model.embeddings.patch_embedding.weight"]) == "hf_siglip"
        assert detect_layout([wrap + "visual.trunk.pos_embed"]) == "open_clip_siglip"
        assert detect_layout([wrap + "visual.attn_pool.probe"]) == "pixdex_siglip"
        assert detect_layout([wrap + "visual.class_embedding", wrap + "token_embedding.weight"]) is None


def test_lazy_tower_skip_reads_through_wrapper_prefixes(tmp_path):
    """A ``module.``-wrapped safetensors file loads into a text-only model (the image tensors are skipped
    while reading, under the same prefix rule as the full load)."""
    ref = _model()
    path = _save({f"module.{k}": v for k, v in ref.state_dict().items()}, tmp_path / "ddp.safetensors")
    enc = load_encoder("tiny-vit", checkpoint=path, device="cpu", towers=("text",))
    assert torch.equal(enc.model.token_embedding.weight, ref.token_embedding.weight)
    from pixdex.encoders.checkpoint import _lazy_keep

    keep = _lazy_keep(path, ("visual.",))
    assert keep is not None and not keep("module.visual.proj") and keep("module.ln_final.bias")


def test_open_clip_extra_keys_are_dropped(tmp_path):
    ref = _model()
    sd = dict(
        ref.state_dict(),
        input_resolution=torch.tensor(32),
        context_length=torch.tensor(77),
        vocab_size=torch.tensor(49408),
    )
    m = build_model(get_config("tiny-vit"))
    load_checkpoint(m, _save(sd, tmp_path / "w.safetensors"), get_config("tiny-vit"))
    assert torch.equal(m.token_embedding.weight, ref.token_embedding.weight)


def test_missing_key_is_one_clear_error(tmp_path):
    sd = _model().state_dict()
    del sd["visual.ln_post.weight"]
    path = _save(sd, tmp_path / "broken.safetensors")
    with pytest.raises(PixdexError) as e:
        load_encoder("tiny-vit", checkpoint=path, device="cpu")
    msg = str(e.value)
    assert "missing keys: visual.ln_post.weight" in msg
    assert "broken.safetensors" in msg and "tiny-vit" in msg
    assert "\n" not in msg


def test_wrong_shape_and_unexpected_key(tmp_path):
    sd = _model().state_dict()
    sd["visual.proj"] = torch.zeros(64, 16)
    sd["visual.extra.weight"] = torch.zeros(3)
    path = _save(sd, tmp_path / "w.safetensors")
    with pytest.raises(PixdexError) as e:
        load_encoder("tiny-vit", checkpoint=path, device="cpu")
    msg = str(e.value)
    assert "visual.proj (64, 16) vs (64, 32)" in msg
    assert "unexpected keys: visual.extra.weight" in msg
    assert "missing" not in msg


def test_wrong_architecture_lists_are_truncated(tmp_path):
    path = _save(_model("tiny-rn").state_dict(), tmp_path / "rn.safetensors")
    with pytest.raises(PixdexError) as e:
        load_encoder("tiny-vit", checkpoint=path, device="cpu")
    msg = str(e.value)
    assert "missing keys: visual.class_embedding" in msg and "unexpected keys: visual.attnpool" in msg
    assert "more)" in msg and len(msg) < 2000


def test_unreadable_files(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(PixdexError, match="cannot read checkpoint .*junk.bin"):
        load_encoder("tiny-vit", checkpoint=junk, device="cpu")
    with pytest.raises(PixdexError, match="checkpoint not found"):
        load_encoder("tiny-vit", checkpoint=tmp_path / "nope.safetensors", device="cpu")
    not_sd = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_sd)
    with pytest.raises(PixdexError, match="not a state dict"):
        read_state_dict(not_sd)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickles_cannot_run_code(tmp_path):
    marker = str(tmp_path / "pwned")
    legacy = tmp_path / "evil.pt"
    torch.save({"visual.proj": _Evil(marker)}, legacy)
    with pytest.raises(PixdexError):
        read_state_dict(legacy)
    # a TorchScript-looking archive whose data.pkl calls os.mkdir
    ts = tmp_path / "evil_ts.pt"
    with zipfile.ZipFile(ts, "w") as zf:
        zf.writestr("evil/code/__torch__.py", "")
        zf.writestr("evil/constants.pkl", pickle.dumps(()))
        zf.writestr("evil/data.pkl", pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(PixdexError, match="refusing to load posix.mkdir|refusing to load os.mkdir"):
        read_state_dict(ts)
    assert not os.path.exists(marker)


def _torchscript_archive(path, data_pkl: bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("arch/code/__torch__.py", "")
        zf.writestr("arch/constants.pkl", pickle.dumps(()))
        zf.writestr("arch/data.pkl", data_pkl)
    return path


# Hand-written pickles (protocol 2 opcodes) that only use globals the reader allows, but misuse them.
_MISUSED_ALLOWED_GLOBALS = {
    # torch.FloatStorage resolves to the dtype torch.float32, which the pickle then calls
    "non_callable_global": b"\x80\x02ctorch\nFloatStorage\n)R.",
    # the tensor rebuild function called with too few arguments
    "wrong_arguments": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n(K\x01K\x02tR.",
    # OrderedDict called with a number
    "bad_ordereddict": b"\x80\x02ccollections\nOrderedDict\nK\x05\x85R.",
    # a storage whose dtype is a string, not a torch dtype
    "bad_storage_dtype": b"\x80\x02(X\x07\x00\x00\x00storageX\x01\x00\x00\x00xX\x01\x00\x00\x000tQ.",
    # a module object whose attribute is itself: a cycle
    "cycle": b"\x80\x02c__torch__\nM\n)\x81q\x00}q\x01X\x01\x00\x00\x00ah\x00sb.",
}


@pytest.mark.parametrize("case", sorted(_MISUSED_ALLOWED_GLOBALS))
def test_torchscript_reader_every_failure_is_the_one_line_refusal(case, tmp_path):
    ts = _torchscript_archive(tmp_path / f"{case}.pt", _MISUSED_ALLOWED_GLOBALS[case])
    if case == "bad_storage_dtype":  # the archive must hold the storage it names
        with zipfile.ZipFile(ts, "a") as zf:
            zf.writestr("arch/data/0", b"\x00" * 8)
    with pytest.raises(PixdexError, match=r"cannot read TorchScript checkpoint .*\.pt: \S") as e:
        read_state_dict(ts)
    assert "\n" not in str(e.value)


def test_corrupt_member_of_a_torchscript_archive_is_one_line(tmp_path):
    good = _torchscript_archive(tmp_path / "good.pt", pickle.dumps({}))
    data = bytearray(good.read_bytes())
    at = data.find(b"arch/data.pkl") + len(b"arch/data.pkl")  # the member's bytes follow its local name
    data[at + 1] ^= 0xFF  # zipfile then reports a bad CRC (zipfile.BadZipFile)
    bad = tmp_path / "garbled.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(PixdexError, match=r"cannot read TorchScript checkpoint .*CRC"):
        read_state_dict(bad)


def test_text_tower_only_keeps_no_image_weights(tmp_path):
    ref = _model()
    full = _save(ref.state_dict(), tmp_path / "w.safetensors")
    enc = load_encoder("tiny-vit", checkpoint=full, device="cpu", towers=("text",))
    keys = list(enc.model.state_dict())
    assert keys and not any(k.startswith("visual.") for k in keys)
    assert set(enc.text_state_dict()) == {k for k in keys if k != "logit_scale"}
    with pytest.raises(PixdexError, match="without its image tower"):
        enc.encode_images(np.zeros((1, 3, 32, 32), np.float32))
    _, _, _, txt = _outputs(ref, 32)
    np.testing.assert_allclose(
        enc.encode_texts(TEXTS), torch.nn.functional.normalize(txt, dim=-1).numpy(), atol=1e-6
    )
    # a text-only file loads for the text tower, and is still checked strictly there
    text_only = {k: v for k, v in ref.state_dict().items() if not k.startswith("visual.")}
    enc = load_encoder("tiny-vit", checkpoint=_save(text_only, tmp_path / "t.safetensors"), towers=("text",))
    assert enc.dim == 32
    del text_only["ln_final.bias"]
    with pytest.raises(PixdexError, match="missing keys: ln_final.bias"):
        load_encoder("tiny-vit", checkpoint=_save(text_only, tmp_path / "t2.safetensors"), towers=("text",))
    img = load_encoder("tiny-vit", checkpoint=full, device="cpu", towers=("image",))
    assert img.model.transformer is None and img.model.token_embedding is None
    assert all(k.startswith("visual.") or k == "logit_scale" for k in img.model.state_dict())


def test_bad_image_batch_shape_is_clear():
    enc = load_encoder("tiny-vit", device="cpu")
    with pytest.raises(PixdexError, match=r"expects images of shape \(N, 3, 32, 32\)"):
        enc.encode_images(np.zeros((2, 3, 64, 64), np.float32))
    assert enc.encode_images(np.zeros((0, 3, 32, 32), np.float32)).shape == (0, 32)


def test_random_init_is_seeded_and_explicit():
    a = load_encoder("tiny-vit", device="cpu").encode_texts(TEXTS)
    b = load_encoder("tiny-vit", checkpoint="random", device="cpu").encode_texts(TEXTS)
    np.testing.assert_array_equal(a, b)
    assert load_encoder("tiny-vit").identity()["checkpoint_sha256"] == "random-init-seed0"
    enc = load_encoder("pixdex-demo", random_init=True, device="cpu")
    assert enc.encode_texts(["x"]).shape == (1, 128) and enc.weights_path is None


def test_trained_model_directory(tmp_path):
    ref = _model()
    cfg = get_config("tiny-vit").replace(name="my-model")
    d = tmp_path / "trained"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg.to_dict()))
    with pytest.raises(PixdexError, match="no model.safetensors"):
        load_encoder(str(d))
    _save(ref.state_dict(), d / "model.safetensors")
    enc = load_encoder(str(d), device="cpu")
    assert enc.name == str(d.resolve()) and enc.config.name == "my-model"
    _, _, _, txt = _outputs(ref, 32)
    np.testing.assert_allclose(
        enc.encode_texts(TEXTS), torch.nn.functional.normalize(txt, dim=-1).numpy(), atol=1e-6
    )
    (d / "config.json").write_text("{not json")
    with pytest.raises(PixdexError, match="bad model config"):
        load_encoder(str(d))
    with pytest.raises(PixdexError, match="model directory not found"):
        load_encoder(str(tmp_path / "missing" / "dir"))


def test_file_sha256_cache_follows_the_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc")
    assert file_sha256(p) == hashlib.sha256(b"abc").hexdigest()
    assert (tmp_path / "cache" / "sha256.json").is_file()
    p.write_bytes(b"abcd")
    os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10_000_000))
    assert file_sha256(p) == hashlib.sha256(b"abcd").hexdigest()


def test_bundled_demo_weights_load():
    from pixdex.encoders.registry import demo_weights_path

    assert demo_weights_path().is_file()  # shipped in the repository (README "Reproducing pixdex-demo")
    enc = load_encoder("pixdex-demo", device="cpu")
    out = enc.encode_texts(["a red circle", "a blue square"])
    assert out.shape == (2, enc.dim) and enc.identity()["checkpoint_sha256"] == file_sha256(
        demo_weights_path()
    )


def test_missing_demo_weights_is_one_clear_error(tmp_path, monkeypatch):
    from pixdex.encoders import registry

    gone = tmp_path / "weights" / f"{registry.DEMO_MODEL}.safetensors"
    monkeypatch.setattr(registry, "demo_weights_path", lambda: gone)
    with pytest.raises(PixdexError, match="bundled demo weights are missing") as e:
        load_encoder("pixdex-demo")
    assert str(gone) in str(e.value) and "--checkpoint" in str(e.value) and "\n" not in str(e.value)
    assert not any(r["cached"] for r in registry.describe_models() if r["name"] == registry.DEMO_MODEL)
