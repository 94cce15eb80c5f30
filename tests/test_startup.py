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
