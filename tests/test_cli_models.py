"""`pixdex models` and `pixdex embed` as a user runs them (subprocesses, offline, caches in tmp_path)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def run(tmp_path):
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_OFFLINE": "1",
        "PIXDEX_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    env.pop("HF_HUB_CACHE", None)

    def _run(*args):
        return subprocess.run(
            [sys.executable, "-m", "pixdex", *args], capture_output=True, text=True, env=env, timeout=300
        )

    return _run


def test_models_json_and_table(run):
    r = run("models", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    by_name = {row["name"]: row for row in rows}
    for name in ("RN50", "ViT-B-32", "ViT-B-32-256", "ViT-L-14", "tiny-vit", "pixdex-demo"):
        assert name in by_name
    assert by_name["ViT-B-32-256"]["dim"] == 512 and by_name["ViT-B-32-256"]["image_size"] == 256
    assert "datacomp_s34b_b86k" in by_name["ViT-B-32-256"]["pretrained"]
    assert by_name["ViT-L-14"]["dim"] == 768 and by_name["RN50"]["dim"] == 1024
    assert by_name["ViT-B-32"]["cached"] == []  # an empty HF cache
    assert all(set(row) >= {"name", "family", "dim", "image_size", "pretrained", "cached"} for row in rows)
    r = run("models")
    assert r.returncode == 0 and "ViT-B-32-256" in r.stdout and "datacomp_s34b_b86k" in r.stdout


def _embedding(r, dim):
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"model", "dim", "embedding"} and out["dim"] == dim and len(out["embedding"]) == dim
    vec = np.asarray(out["embedding"], dtype=np.float64)
    assert abs(np.linalg.norm(vec) - 1.0) < 1e-5
    return out


def test_embed_text_and_image(run, tmp_path):
    a = _embedding(run("embed", "--model", "tiny-vit", "--text", "a dog on the beach"), 32)
    b = _embedding(run("embed", "-m", "tiny-vit", "--text", "a dog on the beach"), 32)
    assert a == b and a["model"] == "tiny-vit"
    photo = sorted((DATA / "photos").glob("*.jpg"))[0] if DATA.is_dir() else None
    if photo is None:
        from PIL import Image

        photo = tmp_path / "p.png"
        Image.new("RGB", (50, 40), (200, 30, 30)).save(photo)
    img = _embedding(run("embed", "--model", "tiny-rn", "--image", str(photo)), 32)
    assert img["model"] == "tiny-rn"


def test_embed_errors_are_one_line(run, tmp_path):
    corrupt = DATA / "corrupt"
    bad = next(iter(sorted(corrupt.glob("*"))), None) if corrupt.is_dir() else None
    if bad is None:
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cases = [
        (("embed", "--model", "tiny-vit", "--image", str(bad)), "cannot decode image"),
        (
            ("embed", "--model", "tiny-vit", "--text", "x", "--image", str(bad)),
            "exactly one of --text or --image",
        ),
        (("embed", "--model", "ViT-B-32-256", "--text", "a dog"), "--checkpoint"),
        (("embed", "--model", "no-such-model", "--text", "a dog"), "unknown model 'no-such-model'"),
    ]
    for args, expected in cases:
        r = run(*args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pixdex: error: ") and expected in lines[0], r.stderr
        assert r.stdout == ""


def test_version_is_single_sourced_and_loads_no_model_code():
    """`pixdex --version` prints the package's one version string, in a fresh interpreter that imports
    neither torch nor the storage or index libraries; pyproject.toml reads that same string."""
    tomllib = pytest.importorskip("tomllib")
    import pixdex

    code = (
        "import sys\n"
        "sys.argv = ['pixdex', '--version']\n"
        "from pixdex.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('torch', 'sqlalchemy', 'faiss', 'open_clip') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"pixdex {pixdex.__version__}", "heavy: []"]
    project = tomllib.loads((Path(pixdex.__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pixdex.__version__"}
