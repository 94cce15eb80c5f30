"""Tokenizers: CLIP's byte-level BPE (written here) and, lazily, SigLIP's SentencePiece.

No torch and no open_clip import: the text-search path starts without torch. The CLIP BPE merges are
read from the ``bpe_simple_vocab_16e6.txt.gz`` that open_clip ships, located without importing open_clip.
Output equals open_clip's ``SimpleTokenizer`` (``clean="lower"``): ftfy fix, html unescape (twice), strip,
whitespace collapse, lowercase; ``<start_of_text>`` ... ``<end_of_text>``; zero padding; truncation
keeps ``<end_of_text>`` as the last token.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import logging
import os
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
SOT = "<start_of_text>"
EOT = "<end_of_text>"
_N_MERGES = 49152 - 256 - 2


def _bpe_path() -> Path:
    env = os.environ.get("PIXDEX_BPE_PATH")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("open_clip")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / BPE_FILE
        if p.is_file():
            return p
    raise PixdexError(
        f"cannot find the CLIP BPE vocabulary {BPE_FILE} (install open_clip_torch, "
        "or set PIXDEX_BPE_PATH to the file)"
    )


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """OpenAI's reversible map from bytes to printable unicode characters."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=4)
def _load_bpe(path: str) -> tuple[dict[str, int], dict[str, int]]:
    """(token -> id, "first second" merge -> rank) of the CLIP vocabulary; cached per process.

    Merges stay the file's "first second" lines (pieces never contain a space): no per-line split,
    which keeps the cold start of a text search ~0.1 s shorter."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as e:
        raise PixdexError(f"cannot read the CLIP BPE vocabulary {path}: {e}") from e
    merges = lines[1 : _N_MERGES + 1]
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges] + [SOT, EOT]
    encoder = dict(zip(vocab, range(len(vocab))))
    ranks = dict(zip(merges, range(len(merges))))
    return encoder, ranks


def _fix_text(text: str) -> str:
    if text.isascii() and text.isprintable() and "&" not in text:
        return text  # ftfy's fixes need non-ASCII, control characters or HTML entities: skip its import
    try:
        import ftfy
    except ModuleNotFoundError:  # ftfy is optional: without it text is used as given
        return text
    return ftfy.fix_text(text)


class ClipTokenizer:
    """``tok(list[str]) -> np.ndarray int64 (N, context_length)``; equal to open_clip's SimpleTokenizer."""

    def __init__(self, context_length: int = 77, bpe_path: Optional[Path] = None):
        import regex

        self.context_length = int(context_length)
        self.encoder, self.ranks = _load_bpe(str(bpe_path or _bpe_path()))
        self.byte_encoder = bytes_to_unicode()
        self.sot_id = self.encoder[SOT]
        self.eot_id = self.encoder[EOT]
        self.vocab_size = len(self.encoder)
        self._cache: dict[str, list[int]] = {}
        self._pat = regex.compile(
            SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    @staticmethod
    def clean(text: str) -> str:
        text = html.unescape(html.unescape(_fix_text(text))).strip()
        return " ".join(text.split()).lower()

    def _bpe(self, token: str) -> list[int]:
        """Ids of one pre-token (already byte-encoded); memoised."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        if token in (SOT, EOT):
            ids = [self.encoder[token]]
        else:
            word = list(token[:-1]) + [token[-1] + "</w>"]
            ranks = self.ranks
            while len(word) > 1:
                best, best_rank = None, None
                for a, b in zip(word, word[1:]):
                    r = ranks.get(a + " " + b)
                    if r is not None and (best_rank is None or r < best_rank):
                        best, best_rank = (a, b), r
                if best is None:
                    break
                first, second = best
                merged, i, n = [], 0, len(word)
                while i < n:
                    if i < n - 1 and word[i] == first and word[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(word[i])
                        i += 1
                word = merged
            ids = [self.encoder[w] for w in word]
        if len(self._cache) < 100_000:
            self._cache[token] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without start/end tokens."""
        out: list[int] = []
        be = self.byte_encoder
        for tok in self._pat.findall(self.clean(text)):
            out.extend(self._bpe("".join(be[b] for b in tok.encode("utf-8"))))
        return out

    def __call__(self, texts: list[str]) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        ctx = self.context_length
        result = np.zeros((len(texts), ctx), dtype=np.int64)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise PixdexError(f"cannot tokenize a {type(text).__name__}; expected text")
            ids = [self.sot_id] + self.encode(text) + [self.eot_id]
            if len(ids) > ctx:
                ids = ids[:ctx]
                ids[-1] = self.eot_id
            result[i, : len(ids)] = ids
        return result


def get_tokenizer(config, model_dir: Optional[Path] = None) -> Callable[[list[str]], np.ndarray]:
    """The tokenizer of a ModelConfig: ``list[str] -> np.ndarray int64 (N, context_length)``."""
    tok = config.tokenizer
    if tok.kind == "clip_bpe":
        return ClipTokenizer(tok.context_length)
    if tok.kind == "sentencepiece":
        from pixdex.encoders.sp_tokenizer import SentencePieceTokenizer

        return SentencePieceTokenizer(config, model_dir)
    raise PixdexError(f"model {config.name}: unknown tokenizer kind {tok.kind!r}")
