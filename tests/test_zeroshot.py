"""Zero-shot classification equals open_clip's: ``build_zero_shot_classifier`` (class embeddings from a
template ensemble) and the model's own logits (``exp(logit_scale) * cos``, plus ``logit_bias`` for SigLIP),
on identical random weights loaded from the reference model's own checkpoint file; through the torch
encoder and through the store's numpy text tower."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")
from open_clip.zero_shot_classifier import build_zero_shot_classifier  # noqa: E402

from pixdex.encoders.zeroshot import (  # noqa: E402
    ZeroShotClassifier,
    build_classifier,
    class_embeddings,
    top_k,
)
from pixdex.errors import PixdexError  # noqa: E402

ATOL = 1e-5
CLASSES = ["dog", "cat on a sofa", "Zürich at night", "receipt"]
TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}.", "art of the {}."]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    yield
    torch.set_num_threads(old)


def _randomize(model, seed):
    """Biases and norms random too (their defaults would hide a mix-up), weights stay open_clip's."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim <= 1:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _reference_probs(ref, weights, images, kind):
    """open_clip's zero-shot logits: its image features, normalised, against its classifier."""
    with torch.no_grad():
        img = torch.nn.functional.normalize(ref.encode_image(images), dim=-1)
        logits = ref.logit_scale.exp() * img @ weights
        if kind == "siglip":
            return torch.sigmoid(logits + ref.logit_bias).numpy()
        return logits.softmax(dim=-1).numpy()


def test_vit_b32_matches_open_clip(tmp_path):
    from safetensors.torch import save_file

    from pixdex.encoders.encoder import load_encoder
    from pixdex.encoders.textexport import export_text_tower, load_text_encoder

    torch.manual_seed(1234)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    _randomize(ref, 7)
    with torch.no_grad():
        ref.logit_scale.fill_(5.5)  # not the init value: the model's own temperature must be used
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))

    want_w = build_zero_shot_classifier(ref, open_clip.get_tokenizer("ViT-B-32"), CLASSES, TEMPLATES).numpy()
    images = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    want_p = _reference_probs(ref, torch.from_numpy(want_w), images, "clip")
    assert want_p.max() - want_p.min() > 0.05  # not a uniform, degenerate comparison

    enc = load_encoder("ViT-B-32", checkpoint=path, device="cpu")
    clf = build_classifier(enc, CLASSES, [[c] for c in CLASSES], TEMPLATES)
    assert clf.kind == "clip" and clf.logit_scale == pytest.approx(5.5)
    assert np.abs(clf.weights.T - want_w).max() <= ATOL
    got_p = clf.probs(enc.encode_images(images.numpy()))
    assert np.abs(got_p - want_p).max() <= ATOL

    # the torch-free path: the text tower exported into a store, with its temperature
    export_text_tower(enc, tmp_path / "store")
    numpy_enc = load_text_encoder(tmp_path / "store", enc.identity())
    assert numpy_enc.logit_scale == pytest.approx(5.5) and numpy_enc.logit_bias is None
    clf_np = build_classifier(numpy_enc, CLASSES, [[c] for c in CLASSES], TEMPLATES)
    assert np.abs(clf_np.weights.T - want_w).max() <= ATOL
    assert np.abs(clf_np.probs(enc.encode_images(images.numpy())) - want_p).max() <= ATOL


class _Ids:
    """The same token ids for both sides (the tokenizer is not what is compared here)."""

    def __init__(self, ctx, vocab):
        self.ctx, self.vocab = ctx, vocab

    def __call__(self, texts):
        rows = []
        for t in texts:
            b = list(t.encode("utf-8"))[: self.ctx - 1]
            rows.append([3 + (x * 7) % (self.vocab - 3) for x in b] + [1] * (self.ctx - len(b)))
        return torch.tensor(rows, dtype=torch.long)


class _TorchTextEncoder:
    """pixdex's SigLIP text tower behind the encoder interface zeroshot uses."""

    kind = "siglip"

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.logit_scale = float(model.logit_scale)
        self.logit_bias = float(model.logit_bias)

    def encode_texts(self, texts):
        with torch.no_grad():
            return torch.nn.functional.normalize(self.model.encode_text(self.tok(texts)), dim=-1).numpy()


@pytest.mark.slow
def test_vit_b16_siglip_matches_open_clip(tmp_path):
    """Full-size ViT-B-16-SigLIP (random weights saved by open_clip, read by pixdex's loader)."""
    pytest.importorskip("timm")
    from safetensors.torch import save_file

    from pixdex.encoders.checkpoint import load_checkpoint
    from pixdex.encoders.siglip import SigLIP
    from pixdex.encoders.siglip_configs import SIGLIP_CONFIGS

    with torch.device("meta"):
        ref = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None, device="meta")
    ref = ref.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * p[0].numel() ** -0.5)
            elif name.endswith("weight") and "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        ref.logit_scale.fill_(2.3)
        ref.logit_bias.fill_(-1.5)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    config = SIGLIP_CONFIGS["ViT-B-16-SigLIP"]
    with torch.device("meta"):
        model = SigLIP(config)
    load_checkpoint(model, path, config)
    model.eval()

    tok = _Ids(config.text.context_length, config.text.vocab_size)
    want_w = build_zero_shot_classifier(ref, tok, CLASSES, TEMPLATES).numpy()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    want_p = _reference_probs(ref, torch.from_numpy(want_w), images, "siglip")
    assert 0.01 < want_p.min() and want_p.max() < 0.99  # sigmoids away from saturation

    clf = build_classifier(_TorchTextEncoder(model, tok), CLASSES, [[c] for c in CLASSES], TEMPLATES)
    assert np.abs(clf.weights.T - want_w).max() <= ATOL
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(images), dim=-1).numpy()
    assert np.abs(clf.probs(img) - want_p).max() <= ATOL


def test_small_siglip_matches_open_clips_classifier_on_transformers_weights(tmp_path):
    """A small SigLIP (transformers' SiglipModel as the independent reference model) through pixdex's
    loader, the numpy tower export and zeroshot: open_clip's classifier on transformers' text features,
    transformers' own logit_scale/logit_bias."""
    transformers = pytest.importorskip("transformers")
    import logging

    from pixdex.encoders.encoder import load_encoder
    from pixdex.encoders.textexport import export_text_tower, load_text_encoder

    hc = transformers.SiglipConfig(
        text_config=dict(
            vocab_size=100,
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=None,
            eos_token_id=1,
            pad_token_id=1,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
    )
    torch.manual_seed(0)
    ref = transformers.SiglipModel(hc).eval()
    _randomize(ref, 9)
    with torch.no_grad():
        ref.logit_scale.fill_(2.0)
        ref.logit_bias.fill_(-0.7)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.save_pretrained(str(tmp_path / "hf"))
    pytest.importorskip("sentencepiece")
    from encoder_support import train_spiece

    # a tokenizer file for the directory to load; the comparison itself feeds both sides the same ids
    (tmp_path / "hf" / "spiece.model").write_bytes(
        train_spiece(
            ["a photo of a dog", "the red car", "two cats on a sofa", "mountain lake at sunset"] * 40
        )
    )
    tok = _Ids(16, 100)

    class HF:
        def encode_text(self, ids, normalize=False):
            f = ref.get_text_features(input_ids=ids)
            f = getattr(f, "pooler_output", f)
            return torch.nn.functional.normalize(f, dim=-1) if normalize else f

    want_w = build_zero_shot_classifier(HF(), tok, CLASSES, TEMPLATES).numpy()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        img = ref.get_image_features(pixel_values=x)
        img = torch.nn.functional.normalize(getattr(img, "pooler_output", img), dim=-1)
        want_p = torch.sigmoid(
            img @ torch.from_numpy(want_w) * ref.logit_scale.exp() + ref.logit_bias
        ).numpy()

    enc = load_encoder(tmp_path / "hf", device="cpu")
    assert enc.kind == "siglip" and enc.logit_bias == pytest.approx(-0.7)
    export_text_tower(enc, tmp_path / "store")
    numpy_enc = load_text_encoder(tmp_path / "store", enc.identity())
    numpy_enc.tokenizer = lambda texts: tok(texts).numpy()  # the same ids as the reference
    clf = build_classifier(numpy_enc, CLASSES, [[c] for c in CLASSES], TEMPLATES)
    assert clf.kind == "siglip" and clf.logit_bias == pytest.approx(-0.7)
    assert np.abs(clf.weights.T - want_w).max() <= ATOL
    assert np.abs(clf.probs(enc.encode_images(x.numpy())) - want_p).max() <= ATOL


# ----------------------------------------------------------------------------- the math on its own


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class _Table:
    """A text encoder that looks texts up in a table of random vectors (not normalised)."""

    def __init__(self, dim=8, seed=0):
        self.rng = np.random.default_rng(seed)
        self.dim, self.seen = dim, {}
        self.calls = []

    def __call__(self, texts):
        self.calls.append(len(texts))
        for t in texts:
            self.seen.setdefault(t, self.rng.normal(size=self.dim) * self.rng.uniform(0.5, 3))
        return np.stack([self.seen[t] for t in texts]).astype(np.float32)


def test_synonyms_are_averaged_like_templates_and_batches_do_not_matter():
    enc = _Table()
    classes = [["receipt", "till receipt"], ["dog"]]
    templates = ["a {}.", "a photo of {}, {}."]  # every {} is replaced
    w = class_embeddings(enc, classes, templates, batch_size=3)
    assert enc.calls == [3, 3]
    texts = [[t.replace("{}", n) for n in names for t in templates] for names in classes]
    assert "a photo of till receipt, till receipt." in texts[0]
    for row, ts in zip(w, texts):
        want = _unit(np.mean([_unit(enc.seen[t]) for t in ts], axis=0))
        np.testing.assert_allclose(row, want, atol=1e-6)
    np.testing.assert_allclose(class_embeddings(enc, classes, templates, batch_size=100), w, atol=1e-6)


def test_probabilities_top_k_and_errors():
    rng = np.random.default_rng(1)
    w = _unit(rng.normal(size=(6, 8))).astype(np.float32)
    x = _unit(rng.normal(size=(4, 8))).astype(np.float32)
    clip = ZeroShotClassifier([f"l{i}" for i in range(6)], w, "clip", np.log(50.0))
    p = clip.probs(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    z = 50.0 * x.astype(np.float64) @ w.T.astype(np.float64)
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(axis=1, keepdims=True), atol=1e-6)
    sig = ZeroShotClassifier(clip.labels, w, "siglip", np.log(10.0), -2.0)
    np.testing.assert_allclose(sig.probs(x), 1 / (1 + np.exp(-(10.0 * x @ w.T - 2.0))), atol=1e-6)
    idx, vals = top_k(p, 3)
    for i in range(4):
        assert list(idx[i]) == list(np.argsort(-p[i], kind="stable")[:3])
    tops = clip.top(x, k=3, min_prob=0.2)
    for i, ranked in enumerate(tops):
        assert (
            all(q >= 0.2 for _, q in ranked) and [q for _, q in ranked] == sorted(p[i][p[i] >= 0.2])[::-1][:3]
        )
    with pytest.raises(PixdexError, match="has no"):
        class_embeddings(_Table(), [["x"]], ["no placeholder"])
    with pytest.raises(PixdexError, match="logit_bias"):
        ZeroShotClassifier(["a"], w[:1], "siglip", 1.0, None)
    with pytest.raises(PixdexError, match="shape"):
        clip.probs(x[:, :4])
