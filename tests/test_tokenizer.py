"""The torch-free CLIP BPE tokenizer equals open_clip's SimpleTokenizer, token for token."""

import random

import numpy as np
import pytest
from encoder_support import run_fresh_python

from pixdex.encoders.registry import get_config
from pixdex.encoders.tokenizer import ClipTokenizer, get_tokenizer

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

WORDS = [
    "a",
    "photo",
    "of",
    "dog",
    "cat",
    "the",
    "Sunset",
    "over",
    "MOUNTAINS",
    "naïve",
    "café",
    "résumé",
    "Zürich",
    "東京",
    "猫",
    "写真",
    "北京烤鸭",
    "한국어",
    "Привет",
    "мир",
    "γειά",
    "שלום",
    "مرحبا",
    "हिन्दी",
    "🐶",
    "🐱‍👤",
    "👩🏽‍🚀",
    "🇫🇷",
    "&amp;",
    "&lt;b&gt;",
    "&quot;hi&quot;",
    "&#39;",
    "&amp;amp;",
    "it's",
    "don't",
    "we'll",
    "they've",
    "I'm",
    "you'd",
    "3.14159",
    "2024-01-01",
    "#hashtag",
    "@user",
    "http://example.com/a?b=c",
    "C++",
    "e-mail",
    "\u00a0",
    "\u200b",
    "ﬁ",
    "Ⅻ",
    "½",
    "x²",
    "—",
    "“quoted”",
    "…",
    "mojibake: Ã©",
    "Ã¼ber",
    "<start_of_text>",
    "<end_of_text>",
    "\t",
    "tab\tsep",
    "new\nline",
    "SHOUTING!!!",
    "??",
    "...",
    "a_b_c",
]


def _generated(n=300, seed=0):
    rng = random.Random(seed)
    out = ["", " ", "   \t\n  ", "\n", "a", "A photo of a dog.", "&amp;&amp;&amp;"]
    out.append(" ".join(rng.choice(WORDS) for _ in range(200)))  # far longer than the context
    out.append("supercalifragilisticexpialidocious" * 20)
    out.append("🐶" * 100)
    while len(out) < n:
        k = rng.randint(1, 12)
        words = [rng.choice(WORDS) for _ in range(k)]
        if rng.random() < 0.3:  # random code points, including astral and combining ones
            words.append(
                "".join(
                    chr(
                        rng.choice(
                            [
                                rng.randint(0x20, 0x7E),
                                rng.randint(0xA0, 0x2FFF),
                                rng.randint(0x1F300, 0x1FAFF),
                                0x301,
                                0x308,
                            ]
                        )
                    )
                    for _ in range(rng.randint(1, 8))
                )
            )
        sep = rng.choice([" ", "  ", "\t", ", ", "-", ""])
        out.append(sep.join(words))
    return out


@pytest.mark.parametrize("context_length", [77, 32])
def test_token_ids_equal_open_clip(context_length):
    texts = _generated()
    ref = open_clip_tokenizer.SimpleTokenizer(context_length=context_length)
    ours = ClipTokenizer(context_length)
    got = ours(texts)
    want = ref(texts).numpy()
    assert got.dtype == np.int64 and got.shape == (len(texts), context_length)
    bad = [t for t, g, w in zip(texts, got, want) if not np.array_equal(g, w)]
    assert not bad, f"{len(bad)} texts tokenized differently, e.g. {bad[:3]!r}"
    # the sample really exercises truncation and the empty string
    assert (got[:, -1] == ours.eot_id).sum() >= 3
    assert list(got[0, :2]) == [ours.sot_id, ours.eot_id]


def test_truncation_keeps_end_token_last():
    tok = ClipTokenizer(16)
    ids = tok(["word " * 100])[0]
    assert ids[0] == tok.sot_id and ids[-1] == tok.eot_id
    assert (ids[1:-1] != 0).all() and (ids[1:-1] != tok.eot_id).all()


def test_get_tokenizer_follows_the_config():
    demo = get_config("pixdex-demo")
    tok = get_tokenizer(demo)
    assert tok(["hello"]).shape == (1, demo.tokenizer.context_length)
    assert get_tokenizer(get_config("ViT-B-32"))(["hello", "world"]).shape == (2, 77)


def test_non_text_input_is_a_clear_error():
    from pixdex.errors import PixdexError

    with pytest.raises(PixdexError, match="cannot tokenize"):
        ClipTokenizer()(["ok", 3])


def test_tokenizer_does_not_import_torch():
    code = (
        "import sys\n"
        "from pixdex.encoders.registry import get_config\n"
        "from pixdex.encoders.tokenizer import get_tokenizer\n"
        "ids = get_tokenizer(get_config('ViT-B-32-256'))(['a photo of a dog'])\n"
        "assert ids.shape == (1, 77), ids.shape\n"
        "bad = [m for m in ('torch', 'open_clip') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    r = run_fresh_python(code)
    assert r.returncode == 0, r.stderr
