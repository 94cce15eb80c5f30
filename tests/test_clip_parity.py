"""pixdex's CLIP equals open_clip's on the same weights, loaded from real checkpoint formats.

Reference: ``open_clip.create_model(name, pretrained=None)`` with its weights perturbed (so that zero-init
parts such as ResNet ``bn3`` and BatchNorm statistics matter) and rounded to fp16-representable values
(so that an fp16 OpenAI-style TorchScript archive holds exactly the same weights).
"""

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

from pixdex.encoders.encoder import load_encoder  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXTS = ["a photo of a dog on the beach", "Zürich at night, 東京 🐱 &amp; a very long caption " * 6]
ATOL = 1e-5
log = logging.getLogger(__name__)  # the measured differences: pytest -o log_cli=true --log-cli-level=INFO


def _reference(name):
    torch.manual_seed(1234)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model(name, pretrained=None)
    model.eval()
    # matrices are random already; constant-initialised vectors (biases, norms, ResNet bn3) and the
    # BatchNorm statistics are made random too, so that a mix-up of any of them shows
    g = torch.Generator().manual_seed(99)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for key, b in model.named_buffers():
            if key.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
            elif key.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
    return model


class Ref:
    """A reference model and its outputs on fixed inputs (computed once)."""

    def __init__(self, name, model):
        self.name, self.model = name, model
        self.images = _images(
            model.visual.image_size[0]
            if isinstance(model.visual.image_size, tuple)
            else model.visual.image_size
        )
        self.ids = open_clip.get_tokenizer(name)(TEXTS)
        with torch.no_grad():
            self.img = model.encode_image(self.images)
            self.txt = model.encode_text(self.ids)


def _images(size):
    from PIL import Image

    from pixdex.encoders.config import PreprocessConfig
    from pixdex.encoders.preprocess import Preprocessor

    files = sorted((DATA / "photos").glob("*.jpg"))[:2] if DATA.is_dir() else []
    if len(files) < 2:
        return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    pre = Preprocessor(PreprocessConfig(image_size=size))
    return torch.from_numpy(np.stack([pre(Image.open(f).convert("RGB")) for f in files]))


def _check(ref: Ref, checkpoint, fmt, api=False, name=None):
    name = name or ref.name
    enc = load_encoder(name, checkpoint=checkpoint, device="cpu")
    with torch.inference_mode():
        got_img = enc.model.encode_image(ref.images)
        got_txt = enc.model.encode_text(ref.ids)
    d_img = (got_img - ref.img).abs().max().item()
    d_txt = (got_txt - ref.txt).abs().max().item()
    log.info("%s [%s]: max |diff| image %.2e, text %.2e", name, fmt, d_img, d_txt)
    assert ref.img.abs().max() > 0.1 and ref.txt.abs().max() > 0.1  # not a degenerate comparison
    assert d_img <= ATOL and d_txt <= ATOL
    if api:  # the Encoder API (numpy in, normalised numpy out) agrees with the normalised reference
        norm = torch.nn.functional.normalize
        np.testing.assert_allclose(
            enc.encode_images(ref.images.numpy()), norm(ref.img, dim=-1).numpy(), atol=ATOL
        )
        np.testing.assert_allclose(enc.encode_texts(TEXTS), norm(ref.txt, dim=-1).numpy(), atol=ATOL)
    return enc


@pytest.fixture(scope="module")
def vit_b32():
    return Ref("ViT-B-32", _reference("ViT-B-32"))


def test_vit_b32_safetensors(vit_b32, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in vit_b32.model.state_dict().items()}, str(path))
    _check(vit_b32, path, "safetensors", api=True)


def test_vit_b32_bin(vit_b32, tmp_path):
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(vit_b32.model.state_dict(), path)
    _check(vit_b32, path, "bin")


def test_vit_b32_openai_torchscript(vit_b32, tmp_path):
    """An OpenAI-style ``.pt``: a TorchScript archive in fp16 with ``input_resolution`` & co. as tensors."""
    import copy

    ref = copy.deepcopy(vit_b32.model)
    with torch.no_grad():  # fp16-representable weights, so the fp16 archive holds exactly these
        for p in ref.parameters():
            p.copy_(p.half())
    for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
        if hasattr(ref, key):
            delattr(ref, key)
        ref.register_buffer(key, torch.tensor(value))
    want = Ref("ViT-B-32", ref)  # before tracing: the traced module shares (and .half() casts) ref's tensors
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(
            ref, {"encode_image": (torch.randn(1, 3, 224, 224),)}, check_trace=False
        )
    traced = traced.half()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(traced, str(path))
    del traced
    # the archive really is TorchScript (code + pickled __torch__ modules) with fp16 storages
    import zipfile

    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickled = zf.read(next(n for n in names if n.endswith("/data.pkl")))
    assert any("/code/" in n for n in names) and b"__torch__" in pickled and b"HalfStorage" in pickled
    enc = _check(want, path, "openai-torchscript-fp16")
    # our restricted reader returns what torch.jit.load would
    from pixdex.encoders.checkpoint import read_state_dict

    ours = read_state_dict(path)
    jit_sd = torch.jit.load(str(path), map_location="cpu").state_dict()
    assert set(ours) == set(jit_sd)
    assert all(ours[k].dtype == jit_sd[k].dtype and torch.equal(ours[k], jit_sd[k]) for k in jit_sd)
    assert ours["visual.proj"].dtype == torch.float16
    assert "input_resolution" in ours and enc.dim == 512


def test_vit_b32_quickgelu_bin(tmp_path):
    ref = Ref("ViT-B-32-quickgelu", _reference("ViT-B-32-quickgelu"))
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in ref.model.state_dict().items()}, "epoch": 3}, path
    )
    _check(ref, path, "bin (wrapped, module.)", api=True)
    # the same weights under the GELU config are a different model: the activation is really used
    enc = load_encoder("ViT-B-32", checkpoint=path, device="cpu", towers=("text",))
    with torch.inference_mode():
        assert (enc.model.encode_text(ref.ids) - ref.txt).abs().max() > 1e-3


def test_rn50_safetensors(tmp_path):
    from safetensors.torch import save_file

    ref = Ref("RN50", _reference("RN50"))
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.model.state_dict().items()}, str(path))
    _check(ref, path, "safetensors", api=True)
