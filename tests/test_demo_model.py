"""The bundled `pixdex-demo` model: shipped files fit, and it really aligns text and images on a demo set
generated with a seed that training never used."""

import json

import numpy as np
import pytest

from pixdex.encoders.registry import demo_weights_path
from pixdex.training.demo_data import COLOURS, SHAPES, generate

pytestmark = pytest.mark.skipif(
    not demo_weights_path().is_file(), reason="pixdex-demo weights not shipped yet"
)

FRESH_SEED = 424242  # training used seed 0; ship.py evaluates on other seeds (EVAL_SETS)
N_FRESH = 500
# measured on the shipped model (see pixdex/encoders/weights/pixdex-demo.metrics.json); the bar for the
# colour x shape queries is the issue's, the caption bar sits just under the measured figure
MIN_PRECISION_AT_5 = 0.90
MIN_CAPTION_T2I_R5 = 0.80
MIN_ZERO_SHOT = 0.90


@pytest.fixture(scope="module")
def encoder():
    from pixdex.encoders.encoder import load_encoder

    return load_encoder("pixdex-demo", device="cpu")


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh") / "set"
    generate(out, n=N_FRESH, seed=FRESH_SEED)
    return out


def test_shipped_files(encoder):
    from safetensors import safe_open

    from pixdex.encoders.build import build_model
    from pixdex.encoders.config import ModelConfig

    path = demo_weights_path()
    assert path.stat().st_size <= 10 * 1024 * 1024
    config = ModelConfig.from_dict(json.loads(path.with_suffix(".json").read_text()))
    assert config == encoder.config and config.name == "pixdex-demo"
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    import torch

    with torch.device("meta"):
        expected = set(build_model(config).state_dict())
    assert keys == expected
    assert encoder.weights_path == path


def test_colour_shape_queries_precision_at_5(encoder, fresh):
    from pixdex.training.evaluate import colour_shape_precision

    res = colour_shape_precision(encoder, fresh, k=5)
    print(
        f"\npixdex-demo on fresh seed {FRESH_SEED} ({N_FRESH} images): colour x shape precision@5 "
        f"{res['precision_at_k']:.3f} over {len(COLOURS) * len(SHAPES)} queries (worst: {res['worst']}); "
        f"caption t2i R@1 {res['caption_t2i_r1']:.3f} R@5 {res['caption_t2i_r5']:.3f}, "
        f"i2t R@1 {res['caption_i2t_r1']:.3f} R@5 {res['caption_i2t_r5']:.3f}"
    )
    assert len(res["per_query"]) == len(COLOURS) * len(SHAPES)
    assert res["precision_at_k"] >= MIN_PRECISION_AT_5
    assert res["caption_t2i_r5"] >= MIN_CAPTION_T2I_R5


def test_lone_objects_are_classified_zero_shot(encoder, fresh):
    """Each single-object image, scored against all colour x shape queries, picks its own pair; changing
    only the colour or only the shape of the query retrieves other images."""
    from pixdex.images import load_for_model
    from pixdex.training.demo_data import load_annotations

    recs = load_annotations(fresh)["images"]
    lone = [r for r in recs if len(r["objects"]) == 1]
    x = np.stack([encoder.preprocess(load_for_model(fresh / r["image"], encoder.preprocess)) for r in lone])
    emb = encoder.encode_images(x)
    pairs = [(c, s) for c in COLOURS for s in SHAPES]
    q = encoder.encode_texts([f"a {c} {s}" for c, s in pairs])
    guess = (emb @ q.T).argmax(axis=1)
    truth = np.array([pairs.index((r["objects"][0]["colour"], r["objects"][0]["shape"])) for r in lone])
    colour_ok = np.mean([pairs[g][0] == pairs[t][0] for g, t in zip(guess, truth)])
    shape_ok = np.mean([pairs[g][1] == pairs[t][1] for g, t in zip(guess, truth)])
    acc = float((guess == truth).mean())
    print(
        f"\nzero-shot colour x shape on {len(lone)} single-object images: {acc:.3f} "
        f"(colour {colour_ok:.3f}, shape {shape_ok:.3f})"
    )
    assert len(lone) > 100
    assert acc >= MIN_ZERO_SHOT
    top = [
        set(np.argsort(-(emb @ v))[:5])
        for v in encoder.encode_texts(["a red circle", "a blue circle", "a red square"])
    ]
    assert not (top[0] & top[1]) and not (top[0] & top[2])
