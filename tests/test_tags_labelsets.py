"""Label and template sets: the built-in data files against their sources, the file formats, inline
labels, errors, the label-set id; `pixdex classify` on image files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pixdex.errors import PixdexError
from pixdex.tags.labelsets import label_set_id, load_labels, load_templates


def test_builtin_sets_are_open_clips():
    zs = pytest.importorskip("open_clip.zero_shot_metadata")
    imagenet = load_labels("builtin:imagenet")
    # 1000 names; "missile" and "sunglasses" are listed twice by CLIP and merged into one class each
    assert list(dict.fromkeys(zs.IMAGENET_CLASSNAMES)) == list(imagenet.labels)
    assert len(imagenet) == 998
    assert load_templates("builtin:openai") == tuple(t("{}") for t in zs.OPENAI_IMAGENET_TEMPLATES)
    assert load_templates("builtin:selected") == tuple(t("{}") for t in zs.SIMPLE_IMAGENET_TEMPLATES)
    assert load_templates("builtin:simple") == ("a photo of a {}.",)
    assert set(load_templates("builtin:photo")) <= set(load_templates("builtin:openai"))
    everyday = load_labels("builtin:everyday")
    assert 200 <= len(everyday) <= 600
    for must in ("receipt", "screenshot", "dog", "beach", "pizza", "document"):
        assert must in everyday.labels
    i = everyday.labels.index("receipt")
    assert everyday.names[i][0] == "receipt" and "till receipt" in everyday.names[i]


def test_label_and_template_files_and_inline_specs(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# pets\ncat: kitten, house cat\n\n dog \nCat: tabby\n")
    ls = load_labels(str(f))
    assert ls.labels == ("cat", "dog")
    assert ls.names == (("cat", "kitten", "house cat", "Cat", "tabby"), ("dog",))
    assert load_labels(" cat, dog ,car,").labels == ("cat", "dog", "car")
    assert load_labels("receipt").labels == ("receipt",)
    t = tmp_path / "t.txt"
    t.write_text("a {}.\n# comment\na photo of my {}.\na {}.\n")
    assert load_templates(str(t)) == ("a {}.", "a photo of my {}.")
    assert load_templates("itap of a {}") == ("itap of a {}",)
    t.write_text("no placeholder\n")
    for bad, fn, match in (
        (str(t), load_templates, "has no"),
        ("a photo", load_templates, "not a built-in"),
        ("builtin:nope", load_labels, "unknown built-in"),
        ("builtin:nope", load_templates, "unknown built-in"),
        ("nowhere/labels.txt", load_labels, "no such labels file"),
        ("", load_labels, "empty"),
        (",,", load_labels, "no labels"),
    ):
        with pytest.raises(PixdexError, match=match):
            fn(bad)


def test_label_set_id_depends_on_labels_templates_and_model():
    model = {"model": "m", "checkpoint_sha256": "abc", "dim": 8, "preprocess": {}}
    a = label_set_id(load_labels("cat,dog"), ("a {}.",), model)
    assert a == label_set_id(load_labels("cat, dog"), ("a {}.",), {**model, "checkpoint": "/x"})
    others = {
        label_set_id(load_labels("cat,dog,car"), ("a {}.",), model),
        label_set_id(load_labels("cat,dog"), ("a {}.", "the {}."), model),
        label_set_id(load_labels("cat,dog"), ("a {}.",), {**model, "checkpoint_sha256": "abd"}),
    }
    assert a not in others and len(others) == 3


def test_classify_cli_json(tmp_path):
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from pixdex.cli import app
    from pixdex.training.demo_data import generate, load_annotations

    generate(tmp_path / "d", n=6, seed=14017)
    ann = load_annotations(tmp_path / "d")["images"]
    files = [str(tmp_path / "d" / a["image"]) for a in ann]
    r = CliRunner().invoke(
        app,
        [
            "classify",
            *files,
            "--labels",
            "red circle,blue square,green star,pink cross",
            "--model",
            "pixdex-demo",
        ]
        + ["--templates", "builtin:simple", "--top", "3", "--device", "cpu", "--json"],
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert [o["path"] for o in out] == files
    for o in out:
        probs = [x["prob"] for x in o["labels"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert set(o["labels"][0]) == {"label", "prob"}
    r = CliRunner().invoke(app, ["classify", str(tmp_path / "nope.jpg"), "--labels", "a,b"])
    assert r.exit_code != 0 and isinstance(r.exception, PixdexError) and "no such image" in str(r.exception)
    bad = Path(tmp_path / "bad.jpg")
    bad.write_bytes(b"not an image")
    r = CliRunner().invoke(app, ["classify", str(bad), "--labels", "a,b", "--model", "pixdex-demo"])
    assert isinstance(r.exception, PixdexError) and "cannot decode" in str(r.exception)
