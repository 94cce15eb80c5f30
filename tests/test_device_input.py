"""The encoder's input step: uint8 pixels normalised on the device give exactly the embeddings of the
float32 preprocessing; reduced precision (bfloat16 autocast, what CUDA runs) stays within cosine 0.999
of float32; the batch size follows the device. The CUDA tests run the same code on a GPU (marker gpu)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from pixdex.encoders.device_input import DeviceInput, autocast_dtype
from pixdex.encoders.encoder import load_encoder

PARITY = 0.999
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        base = rng.integers(0, 256, (6 + k % 3, 8, 3), dtype=np.uint8)
        out.append(Image.fromarray(base).resize((97 + 13 * k, 71 + 5 * k), Image.Resampling.BICUBIC))
    return out


def both_inputs(enc, imgs):
    pre = enc.preprocess
    return np.stack([pre(im) for im in imgs]), np.stack([pre.pixels(im) for im in imgs])


@pytest.mark.parametrize("model", ["tiny-vit", "tiny-siglip"])
def test_uint8_pixels_normalised_on_the_device_equal_the_float_path(model):
    enc = load_encoder(model, device="cpu", random_init=True, towers=("image",))
    imgs = photos(5)
    floats, pixels = both_inputs(enc, imgs)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, enc.image_size, enc.image_size, 3)
    # the input step itself: bit for bit what Preprocessor.normalize computes
    di = DeviceInput("cpu", enc.preprocess.config.mean, enc.preprocess.config.std, enc.image_size)
    assert np.array_equal(di.to_model(pixels).numpy(), floats)
    assert np.array_equal(enc.encode_images(pixels), enc.encode_images(floats))
    assert np.array_equal(enc.encode_images(torch.from_numpy(pixels)), enc.encode_images(floats))


def test_wrong_shapes_are_one_line_errors():
    from pixdex.errors import PixdexError

    enc = load_encoder("tiny-vit", device="cpu", random_init=True, towers=("image",))
    s = enc.image_size
    with pytest.raises(PixdexError, match=r"\(N, 3,"):
        enc.encode_images(np.zeros((1, s, s, 3), np.float32))
    with pytest.raises(PixdexError, match="uint8"):
        enc.encode_images(np.zeros((1, 3, s, s), np.uint8))
    assert enc.encode_images(np.zeros((0, s, s, 3), np.uint8)).shape == (0, enc.dim)


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def parity(device: str, model: str, n: int = 8) -> float:
    enc = load_encoder(model, device=device, random_init=True, towers=("image",))
    _, pixels = both_inputs(enc, photos(n, seed=1))
    enc.autocast_dtype = None
    exact = enc.encode_images(pixels)
    enc.autocast_dtype = autocast_dtype(device, "auto" if device.startswith("cuda") else "bf16")
    assert enc.autocast_dtype is not None
    return min_cosine(exact, enc.encode_images(pixels))


def test_bf16_autocast_parity_on_cpu():
    """The reduced-precision path CUDA takes, run by CPU autocast: the same code, the same bar."""
    assert parity("cpu", "tiny-vit") >= PARITY


def test_precision_and_batch_size_choices(monkeypatch):
    monkeypatch.delenv("PIXDEX_AMP", raising=False)
    assert autocast_dtype("cpu") is None
    assert autocast_dtype("cuda", "0") is None
    assert autocast_dtype("cuda", "fp16") is torch.float16
    enc = load_encoder("tiny-vit", device="cpu", random_init=True, towers=("image",))
    assert enc.autocast_dtype is None and enc.batch_size() == 32


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("model", ["tiny-vit", "ViT-B-32-256"])
def test_cuda_autocast_parity(model):
    assert parity("cuda", model, n=16) >= PARITY


@pytest.mark.gpu
@cuda
def test_cuda_uint8_path_matches_cpu_float32():
    cpu = load_encoder("tiny-vit", device="cpu", random_init=True, towers=("image",))
    gpu = load_encoder("tiny-vit", device="cuda", random_init=True, towers=("image",))
    floats, pixels = both_inputs(cpu, photos(6))
    di = DeviceInput("cuda", cpu.preprocess.config.mean, cpu.preprocess.config.std, cpu.image_size)
    assert di.pinned and np.array_equal(di.to_model(pixels).cpu().numpy(), floats)
    gpu.autocast_dtype = None
    assert min_cosine(cpu.encode_images(floats), gpu.encode_images(pixels)) >= 0.9999
    assert di._host.is_pinned()


@pytest.mark.gpu
@cuda
def test_cuda_batch_size_from_free_memory():
    enc = load_encoder("ViT-B-32-256", device="cuda", random_init=True, towers=("image",))
    b = enc.batch_size()
    assert 32 <= b <= 1024 and b & (b - 1) == 0
    x = np.zeros((b, enc.image_size, enc.image_size, 3), np.uint8)
    assert enc.encode_images(x).shape == (b, enc.dim)  # the chosen size fits
