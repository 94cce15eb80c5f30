"""SigLIP sentencepiece tokenizer: ids equal to transformers' SiglipTokenizer and to open_clip's
HFTokenizer(clean='canonicalize') on the same (tiny, trained here) sentencepiece model."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest

from pixdex.encoders.config import TokenizerConfig
from pixdex.encoders.siglip_configs import SIGLIP_CONFIGS
from pixdex.encoders.sp_tokenizer import SentencePieceTokenizer
from pixdex.errors import PixdexError

CTX = 64

_SYLLABLES = [
    "ka",
    "to",
    "ri",
    "mo",
    "sun",
    "set",
    "dog",
    "cat",
    "pho",
    "tree",
    "bea",
    "ch",
    "moun",
    "tain",
    "ver",
    "ci",
    "ty",
    "ni",
    "ght",
    "str",
    "eet",
    "peo",
    "ple",
    "ca",
    "fé",
    "na",
    "ïve",
    "ü",
    "ber",
    "stra",
    "ße",
    "東",
    "京",
    "猫",
    "дан",
    "ные",
    "مر",
    "حبا",
    "🙂",
    "_",
    "'s",
    "3",
    "14",
    "42",
    "#",
    "@",
]
_WORDS = [
    "a",
    "the",
    "of",
    "in",
    "on",
    "with",
    "photo",
    "picture",
    "red",
    "blue",
    "green",
    "dog",
    "cat",
    "car",
]


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """A 400-piece unigram model laid out like T5/SigLIP's (pad 0, </s> 1, <unk> 2, no <s>)."""
    pytest.importorskip("sentencepiece")
    from encoder_support import train_spiece

    rng = random.Random(0)

    def word():
        if rng.random() < 0.4:
            return rng.choice(_WORDS)
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))

    lines = []
    for _ in range(4000):
        s = " ".join(word() for _ in range(rng.randint(1, 12)))
        lines.append(s if rng.random() < 0.5 else s.title())
    d = tmp_path_factory.mktemp("spiece")
    (d / "spiece.model").write_bytes(train_spiece(lines, vocab_size=400, character_coverage=0.9995))
    return d


def _texts(n: int = 400, seed: int = 1):
    rng = random.Random(seed)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJ      \t\n")
        + list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
        + list("éüßæœ東京猫данныеمرحبا🙂▁\u00a0\u2003ﬁＡ１")
        + ["</s>", "<unk>", "<pad>", "</S>", " </s> ", "&amp;", "&lt;/s&gt;", "Ã©", "dog", "photo "]
    )
    texts = [
        "",
        " ",
        "   ",
        "a",
        "A photo of a DOG.",
        "</s>",
        "<unk>",
        "a </s> b",
        "hello</s>",
        "</s></s>x",
        "▁",
        "▁▁a",
        "___",
        "snake_case_words",
        "x" * 500,
        "word " * 100,
        "Ça-va? Très_bien!!",
        "\t\n",
    ]
    for _ in range(n):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 90))))
    return texts


def _sp_config(clean: str, ctx: int = CTX) -> TokenizerConfig:
    return TokenizerConfig(kind="sentencepiece", context_length=ctx, clean=clean)


def test_equal_to_transformers_siglip_tokenizer(sp_dir):
    pytest.importorskip("google.protobuf")
    from transformers import SiglipTokenizer

    ref = SiglipTokenizer(str(sp_dir / "spiece.model"), model_max_length=CTX)
    mine = SentencePieceTokenizer(_sp_config("siglip"), sp_dir)
    texts = _texts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = np.asarray(ref(texts, padding="max_length", max_length=CTX, truncation=True)["input_ids"])
    got = mine(texts)
    assert got.dtype == np.int64 and got.shape == (len(texts), CTX)
    bad = [t for t, a, b in zip(texts, expected, got) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[:3]!r}"
    # the comparison covers truncation, the empty text and texts the vocabulary cannot spell
    assert (got[:, -1] == mine.eos_id).any() and (got[:, 1] == mine.pad_id).any()
    assert (got == mine.unk_id).any()


def test_equal_to_open_clip_hf_tokenizer(sp_dir, tmp_path):
    """open_clip's pretrained SigLIP: HFTokenizer(clean='canonicalize') over the repo's T5 tokenizer."""
    pytest.importorskip("google.protobuf")
    from open_clip.tokenizer import HFTokenizer

    repo = tmp_path / "repo"  # laid out like timm/ViT-B-16-SigLIP's tokenizer files
    repo.mkdir()
    shutil.copy(sp_dir / "spiece.model", repo / "spiece.model")
    (repo / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "T5Tokenizer",
                "extra_ids": 0,
                "legacy": False,
                "pad_token": "</s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "additional_special_tokens": [],
                "model_max_length": CTX,
            }
        )
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = HFTokenizer(str(repo), context_length=CTX, clean="canonicalize")
        texts = _texts(seed=2)
        expected = ref(texts).numpy()
    got = SentencePieceTokenizer(_sp_config("canonicalize"), repo)(texts)
    bad = [t for t, a, b in zip(texts, expected, got) if not np.array_equal(a, b)]
    assert not bad, f"{len(bad)} texts differ, e.g. {bad[:3]!r}"


def test_layout_of_ids(sp_dir):
    tok = SentencePieceTokenizer(_sp_config("siglip", ctx=8), sp_dir / "spiece.model")
    ids = tok(["", "dog", "dog " * 20])
    assert ids.shape == (3, 8)
    assert ids[0].tolist() == [tok.eos_id] + [tok.pad_id] * 7
    n = len(tok.pieces("dog"))
    assert n >= 1 and ids[1, n] == tok.eos_id and (ids[1, n + 1 :] == tok.pad_id).all()
    assert ids[2, -1] == tok.eos_id and tok.eos_id not in ids[2, :-1].tolist()  # cut to ctx-1 pieces + EOS
    # cleaning: case and punctuation do not change the ids
    assert np.array_equal(tok(["A Dog!!"]), tok(["a dog"]))
    # a longer context on request
    assert tok(["dog"], context_length=12).shape == (1, 12)


def test_model_file_from_hf_cache(sp_dir, tmp_path, monkeypatch):
    """open_clip tags: the tokenizer of ``tokenizer.hf_repo`` comes from the Hugging Face cache."""
    import huggingface_hub.constants as hf_constants

    cfg = SIGLIP_CONFIGS["ViT-B-16-SigLIP"]
    repo_dir = tmp_path / ("models--" + cfg.tokenizer.hf_repo.replace("/", "--"))
    snap = repo_dir / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text("0123abcd")
    shutil.copy(sp_dir / "spiece.model", snap / "spiece.model")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = SentencePieceTokenizer(cfg)
    assert tok.model_file.resolve() == (snap / "spiece.model").resolve()
    ids = tok(["a photo of a dog"])
    assert ids.shape == (1, cfg.tokenizer.context_length) and ids[0, 0] != tok.eos_id


def test_missing_or_bad_model_file_is_one_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PixdexError) as e:
        SentencePieceTokenizer(SIGLIP_CONFIGS["ViT-B-16-SigLIP"], tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "spiece.model" in msg and "timm/ViT-B-16-SigLIP" in msg
    (tmp_path / "spiece.model").write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(PixdexError, match="not a sentencepiece model"):
        SentencePieceTokenizer(_sp_config("siglip"), tmp_path)
    with pytest.raises(PixdexError, match="cannot clean"):
        SentencePieceTokenizer(_sp_config("whitespace"), tmp_path)


def test_non_string_input_is_refused(sp_dir):
    tok = SentencePieceTokenizer(_sp_config("siglip"), sp_dir)
    with pytest.raises(PixdexError, match="must be a string"):
        tok(["ok", None])


def test_no_torch_import(sp_dir):
    code = (
        "import sys\n"
        "from pixdex.encoders.sp_tokenizer import SentencePieceTokenizer\n"
        "from pixdex.encoders.siglip_configs import SIGLIP_CONFIGS\n"
        "from pixdex.encoders.config import TokenizerConfig\n"
        f"tok = SentencePieceTokenizer(TokenizerConfig(kind='sentencepiece', context_length=16, clean='canonicalize'),"
        f" {str(sp_dir)!r})\n"
        "assert tok(['a photo of a dog']).shape == (1, 16)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
