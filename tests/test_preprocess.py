"""The numpy + Pillow preprocessing equals open_clip's eval transform on real photos."""

from pathlib import Path

import numpy as np
import pytest
from encoder_support import run_fresh_python
from PIL import Image

from pixdex.encoders.config import SIGLIP_MEAN, SIGLIP_STD, PreprocessConfig
from pixdex.encoders.preprocess import Preprocessor, shortest_side_size
from pixdex.encoders.registry import get_config, list_models

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _photos():
    if not DATA.is_dir():
        pytest.skip(f"real images not available ({DATA})")
    files = sorted((DATA / "photos").glob("*"))[:12] + [
        DATA / "formats" / "tiny-small.jpg",
        DATA / "formats" / "tiny-wee.jpg",
        DATA / "exif" / "exif-rotn-6.jpg",
    ]
    out = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if max(im.size) > 1200:  # keep the test fast; the aspect ratio still matters
                im = im.resize((im.width // 4, im.height // 4), Image.Resampling.BILINEAR)
            out.append(im)
    # both orientations, odd sizes (rounding in resize and crop)
    out += [im.transpose(Image.Transpose.ROTATE_90) for im in out[:3]]
    out.append(out[0].crop((0, 0, 301, 97)))
    return out


def _reference(cfg: PreprocessConfig):
    open_clip = pytest.importorskip("open_clip")
    return open_clip.image_transform(
        cfg.image_size,
        is_train=False,
        mean=cfg.mean,
        std=cfg.std,
        resize_mode=cfg.resize_mode,
        interpolation=cfg.interpolation,
    )


def _check(cfg: PreprocessConfig):
    ref = _reference(cfg)
    ours = Preprocessor(cfg)
    sizes = set()
    for im in _photos():
        want = ref(im).numpy()
        got = ours(im)
        sizes.add(im.size)
        assert got.dtype == np.float32 and got.shape == (3, cfg.image_size, cfg.image_size)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=f"image of size {im.size}")
    assert len(sizes) > 5


@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-32-256"])
def test_equal_to_open_clip_transform(name):
    _check(get_config(name).preprocess)


def test_squash_mode_equal_to_open_clip():
    siglip = [n for n in list_models() if get_config(n).preprocess.resize_mode == "squash"]
    cfg = (
        get_config(siglip[0]).preprocess
        if siglip
        else PreprocessConfig(image_size=224, mean=SIGLIP_MEAN, std=SIGLIP_STD, resize_mode="squash")
    )
    _check(cfg)


def test_shortest_side_rounding_matches_torchvision():
    F = pytest.importorskip("torchvision.transforms.functional")
    for w, h in [(640, 480), (480, 640), (333, 1000), (1000, 333), (225, 224), (97, 301), (224, 224), (7, 5)]:
        for s in (224, 256, 64):
            nh, nw = F._compute_resized_output_size((h, w), [s])
            assert shortest_side_size(w, h, s) == (nw, nh)


def test_non_rgb_input_is_converted_and_draft_size_set():
    pre = Preprocessor(get_config("ViT-B-32"))
    gray = Image.new("L", (300, 200), 128)
    x = pre(gray)
    assert x.shape == (3, 224, 224)
    np.testing.assert_allclose(
        x[:, 0, 0], (128 / 255 - np.array(pre.config.mean)) / np.array(pre.config.std), atol=1e-6
    )
    assert pre.draft_size == (224, 224)


def test_preprocess_does_not_import_torch():
    code = (
        "import sys\n"
        "from PIL import Image\n"
        "from pixdex.encoders.preprocess import Preprocessor\n"
        "from pixdex.encoders.registry import get_config\n"
        "x = Preprocessor(get_config('ViT-B-32-256'))(Image.new('RGB', (300, 200)))\n"
        "assert x.shape == (3, 256, 256)\n"
        "assert 'torch' not in sys.modules\n"
    )
    r = run_fresh_python(code)
    assert r.returncode == 0, r.stderr
