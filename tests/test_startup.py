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
