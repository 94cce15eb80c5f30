"""Start-up of `pixdex index`: building a model without initialising it, the fast load path's parity with
the plain one, the .pt -> safetensors cache and the int8 conversion."""

import json

import pytest

torch = pytest.importorskip("torch")

from encoder_support import run_fresh_python  # noqa: E402


def test_building_on_meta_imports_neither_dynamo_nor_sympy():
    # torch's meta kernels for randn / normal_ / tensor * number are Python code importing torch._dynamo
    # and sympy (seconds of start-up); a model built to receive a checkpoint must not reach them
    code = (
        "import sys, json, torch\n"
        "from pixdex.encoders.build import build_model\n"
        "from pixdex.encoders.registry import get_config\n"
        "for name in ('ViT-B-32-256', 'tiny-rn', 'ViT-B-16-SigLIP'):\n"
        "    with torch.device('meta'):\n"
        "        m = build_model(get_config(name))\n"
        "    assert all(p.is_meta for p in m.parameters())\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch._dynamo', 'sympy')}))\n"
    )
    out = run_fresh_python(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"torch._dynamo": False, "sympy": False}


def test_int8_conversion_equals_torch_quantize_dynamic():
    """The direct conversion (no full-size placeholder packed first) gives quantize_dynamic's very layers."""
    import copy
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from pixdex.encoders import int8
    from pixdex.encoders.config import VisionConfig
    from pixdex.encoders.vit import VisionTransformer

    torch.manual_seed(0)
    cfg = VisionConfig(image_size=64, patch_size=16, width=256, layers=2, heads=4)
    visual = VisionTransformer(cfg, 64).eval()
    ours = int8.int8_twin(visual)
    ref = copy.deepcopy(ours)  # the same tree, its quantised layers put back to float Linears
    for block_ref, block in zip(ref.transformer.resblocks, visual.transformer.resblocks):
        block_ref.attn.in_proj = int8._linear_over(block.attn.in_proj_weight, block.attn.in_proj_bias)
        block_ref.attn.out_proj = block.attn.out_proj
        block_ref.mlp.c_fc, block_ref.mlp.c_proj = block.mlp.c_fc, block.mlp.c_proj
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = quantize_dynamic(ref, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    assert int8.count_quantized(ours) == int8.count_quantized(ref) == 8
    from torch.ao.nn.quantized.dynamic import Linear as QLinear

    checked = 0
    for (name, a), b in zip(ours.named_modules(), ref.modules()):
        if type(a) is QLinear:
            assert type(b) is QLinear, name
            checked += 1
            wa, ba = a.weight(), a.bias()
            wb, bb = b.weight(), b.bias()
            assert torch.equal(wa.int_repr(), wb.int_repr()), name
            assert torch.equal(wa.q_per_channel_scales(), wb.q_per_channel_scales()), name
            assert torch.equal(ba, bb), name
    assert checked == 8
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.equal(ours(x), ref(x))


# ----------------------------------------------------------------------------- fast load path


def _checkpoint_pt(tmp_path, name="tiny-vit", seed=1, file="open_clip_pytorch_model.bin"):
    from pixdex.encoders.build import build_model
    from pixdex.encoders.registry import get_config

    torch.manual_seed(seed)
    model = build_model(get_config(name)).eval()
    with torch.no_grad():  # constant-initialised vectors random too, so every tensor matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / file
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return path


def _reference_outputs(path, name):
    """The plain path: a randomly initialised CPU model, the file read by torch.load, load_state_dict."""
    from pixdex.encoders.build import build_model
    from pixdex.encoders.registry import get_config
    from pixdex.encoders.tokenizer import get_tokenizer

    cfg = get_config(name)
    model = build_model(cfg).eval()
    sd = torch.load(path, weights_only=True)["state_dict"]
    model.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()}, strict=True)
    x = torch.randn(3, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    ids = torch.from_numpy(get_tokenizer(cfg)(["a photo of a cat", "snow"]))
    with torch.inference_mode():
        return x, ids, model.encode_image(x), model.encode_text(ids)


def _fast_outputs(path, name, x, ids):
    from pixdex.encoders.encoder import load_encoder

    enc = load_encoder(name, checkpoint=path, device="cpu")
    assert all(not p.is_meta for p in enc.model.parameters())
    with torch.inference_mode():
        return enc.model.encode_image(x), enc.model.encode_text(ids)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("PIXDEX_CACHE_DIR", str(d))
    return d


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_fast_load_path_equals_the_plain_one(tmp_path, cache, name):
    """Meta build + cached safetensors copy (memory-mapped, assigned): the very outputs of a CPU-built
    model given torch.load's tensors with load_state_dict, on the first load (conversion) and the next."""
    path = _checkpoint_pt(tmp_path, name)
    x, ids, ref_img, ref_txt = _reference_outputs(path, name)
    for _ in range(2):
        img, txt = _fast_outputs(path, name, x, ids)
        assert torch.equal(img, ref_img) and torch.equal(txt, ref_txt)
    assert len(list((cache / "checkpoints").glob("*.safetensors"))) == 1


def test_second_load_reads_the_cached_copy_not_the_torch_file(tmp_path, cache, monkeypatch):
    from pixdex.encoders import checkpoint

    path = _checkpoint_pt(tmp_path)
    x, ids, ref_img, _ = _reference_outputs(path, "tiny-vit")
    _fast_outputs(path, "tiny-vit", x, ids)
    (copy,) = (cache / "checkpoints").glob("*.safetensors")

    def no_unpickling(p):
        raise AssertionError(f"{p} read again")

    monkeypatch.setattr(checkpoint, "_read_torch", no_unpickling)
    img, _ = _fast_outputs(path, "tiny-vit", x, ids)
    assert torch.equal(img, ref_img)
    from safetensors import safe_open

    with safe_open(str(copy), framework="pt") as f:
        assert f.metadata()["source"] == str(path.resolve())


def test_a_changed_torch_file_is_converted_again(tmp_path, cache):
    path = _checkpoint_pt(tmp_path, seed=1)
    x, ids, _, _ = _reference_outputs(path, "tiny-vit")
    first, _ = _fast_outputs(path, "tiny-vit", x, ids)
    (old_copy,) = (cache / "checkpoints").glob("*.safetensors")
    (tmp_path / "other").mkdir()
    new = _checkpoint_pt(tmp_path / "other", seed=2)
    path.write_bytes(new.read_bytes())  # the same path, new weights (and a new size or mtime)
    _, _, ref_img, _ = _reference_outputs(path, "tiny-vit")
    img, _ = _fast_outputs(path, "tiny-vit", x, ids)
    assert torch.equal(img, ref_img) and not torch.equal(img, first)
    (new_copy,) = (cache / "checkpoints").glob("*.safetensors")  # the old copy of this source is gone
    assert new_copy != old_copy


def test_unwritable_cache_still_loads(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("PIXDEX_CACHE_DIR", str(blocker / "cache"))
    path = _checkpoint_pt(tmp_path)
    x, ids, ref_img, _ = _reference_outputs(path, "tiny-vit")
    img, _ = _fast_outputs(path, "tiny-vit", x, ids)
    assert torch.equal(img, ref_img)


# ----------------------------------------------------------------------------- int8 check, remembered


def _int8_encoder(weights_path, sha="ab" * 32):
    from types import SimpleNamespace

    from pixdex.encoders.config import VisionConfig
    from pixdex.encoders.vit import VisionTransformer

    torch.manual_seed(0)
    cfg = VisionConfig(image_size=64, patch_size=16, width=256, layers=2, heads=4)
    visual = VisionTransformer(cfg, 64).eval()
    calls = []  # the float32 tower's runs (the int8 twin, a copy, carries the hook too: not counted)
    visual.register_forward_hook(lambda m, *a: calls.append(1) if m is visual else None)
    enc = SimpleNamespace(
        model=SimpleNamespace(visual=visual),
        device="cpu",
        name="test-vit",
        weights_path=weights_path,
        checkpoint_sha256=lambda: sha,
    )
    return enc, calls


def test_int8_check_is_remembered_per_weights_file(tmp_path, cache):
    from pixdex.encoders import int8

    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    first, calls = _int8_encoder(tmp_path / "w.safetensors")
    assert int8.speed_up(first)
    with torch.inference_mode():
        first.model.visual(x)
    assert calls == [1] and first.model.visual.checked is True  # the float32 probe ran once
    seen = json.loads((cache / int8.CHECKS_FILE).read_text())
    assert list(seen.values()) == [first.model.visual.min_cosine]

    again, calls = _int8_encoder(tmp_path / "w.safetensors")
    assert int8.speed_up(again)
    tower = again.model.visual
    assert tower.checked is True and tower.min_cosine == first.model.visual.min_cosine
    with torch.inference_mode():
        out = tower(x)
        assert torch.equal(out, tower.int8_visual(x))  # int8 from the first batch on
    assert calls == []  # no float32 probe

    other, calls = _int8_encoder(tmp_path / "w.safetensors", sha="cd" * 32)  # other weights: checked
    assert int8.speed_up(other) and other.model.visual.checked is None


def test_a_failed_int8_check_is_remembered_and_random_weights_are_not(tmp_path, cache, monkeypatch):
    from pixdex.encoders import int8

    monkeypatch.setattr(int8, "MIN_COSINE", 1.01)  # unreachable: the check fails
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    enc, _ = _int8_encoder(tmp_path / "w.safetensors")
    assert int8.speed_up(enc)
    with torch.inference_mode():
        enc.model.visual(x)
    assert enc.model.visual.checked is False
    again, _ = _int8_encoder(tmp_path / "w.safetensors")
    assert not int8.speed_up(again)  # float32 straight away, no int8 twin built

    random_init, _ = _int8_encoder(None)
    monkeypatch.setattr(int8, "MIN_COSINE", 0.5)
    assert int8.speed_up(random_init)
    with torch.inference_mode():
        random_init.model.visual(x)
    assert len(json.loads((cache / int8.CHECKS_FILE).read_text())) == 1  # only the file's check
