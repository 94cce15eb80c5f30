"""bench/gpu_check.sh on a machine without CUDA: exits 0 at once with its table, every GPU part
"not run (no CUDA)" (on a CUDA machine it is the GPU check itself, minutes long: not run here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.mark.skipif(has_cuda(), reason="on a CUDA machine the script runs the real check (minutes)")
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash")
def test_gpu_check_prints_its_table_without_cuda(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, PIXDEX_WHEELS=str(tmp_path / "none"))
    p = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")], capture_output=True, text=True, env=env, timeout=240
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("pixdex GPU check")
    table = {ln[:28].strip(): ln[28:].strip() for ln in lines[1:]}
    assert table["install"].startswith("not run")
    assert table["torch"].endswith("no CUDA")
    gpu_parts = [
        "pytest -m gpu",
        "bf16 parity ViT-B-32",
        "encode ViT-B-32 b256",
        "bf16 parity ViT-L-14",
        "encode ViT-L-14 b256",
        "index 5000 x 256px",
        "index 1000 x 12mp",
        "faiss IVF 1,000,000",
    ]
    for name in gpu_parts:
        assert table[name] == "not run (no CUDA)", (name, table.get(name))
    assert not any("failed" in v or "timed out" in v for v in table.values())
