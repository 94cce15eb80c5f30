"""SentencePiece tokenizer for SigLIP text towers (numpy only: no torch import, it runs on the text-search path).

``SentencePieceTokenizer(config, model_dir)(texts) -> np.ndarray int64 (N, context_length)``.

The sentencepiece model file comes with the checkpoint: ``spiece.model`` beside the weights (Hugging Face
layout, ``config.tokenizer.sp_model_file``), or, for open_clip's pretrained SigLIP tags, the file of the
Hugging Face repo ``config.tokenizer.hf_repo`` (e.g. ``timm/ViT-B-16-SigLIP``) from the local HF cache.

Every text becomes ``pieces + [EOS]``, cut to ``context_length - 1`` pieces before the EOS, then padded with
the pad id (``</s>``, the same id as EOS, as in big_vision, transformers and open_clip). Text cleaning
(``config.tokenizer.clean``):

- ``siglip``: transformers' ``SiglipTokenizer`` exactly (checkpoints in the Hugging Face layout): the special
  tokens ``</s>`` / ``<unk>`` written in the text are kept as tokens (whitespace around them dropped), every
  other span is lower-cased, loses ASCII punctuation and has its whitespace collapsed;
- ``canonicalize``: open_clip's ``HFTokenizer(clean='canonicalize')`` (open_clip's pretrained SigLIP):
  ftfy + HTML-unescape, ``_`` -> space, ASCII punctuation removed, lower case, whitespace collapsed.

Other cleanings (``whitespace``, the CLIP BPE default) are refused: SigLIP checkpoints were trained on
canonicalized text, and the reference tokenizers disagree on raw punctuation and special tokens.

After cleaning, the span is encoded as transformers does (``"<unk>" + "▁" + text``, then the pieces of the
``<unk>`` prefix dropped), so the ids equal those of the reference tokenizers on the same model file.
"""

from __future__ import annotations

import html
import logging
import os
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Optional, Union

import numpy as np

from pixdex.encoders.config import ModelConfig, TokenizerConfig
from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

SPIECE_UNDERLINE = "\u2581"
EOS_PIECE = "</s>"
UNK_PIECE = "<unk>"
CLEAN_MODES = ("siglip", "canonicalize")

_PUNCT = str.maketrans("", "", string.punctuation)
_WS = re.compile(r"\s+")
_SPECIAL_SPLIT = re.compile("(" + re.escape(EOS_PIECE) + "|" + re.escape(UNK_PIECE) + ")")


def _basic_clean(text: str) -> str:
    """ftfy fix + double HTML unescape + strip (open_clip's ``basic_clean``)."""
    import ftfy

    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def canonicalize_open_clip(text: str) -> str:
    """open_clip's SigLIP cleaning: ``basic_clean``, ``_`` -> space, no punctuation, lower case, single spaces."""
    text = _basic_clean(text).replace("_", " ").translate(_PUNCT).lower()
    return " ".join(text.split())


def canonicalize_siglip(text: str) -> str:
    """transformers' ``SiglipTokenizer.canonicalize_text``: lower case, no punctuation, collapsed whitespace."""
    return _WS.sub(" ", text.lower().translate(_PUNCT)).strip()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _resolve_model_file(
    tok: TokenizerConfig, model_dir: Optional[Path], allow_download: Optional[bool]
) -> Path:
    tried: list[str] = []
    if model_dir is not None:
        p = Path(model_dir).expanduser()
        if p.is_file():
            return p
        cand = p / tok.sp_model_file
        if cand.is_file():
            return cand
        tried.append(str(cand))
    if tok.hf_repo:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            hit = try_to_load_from_cache(tok.hf_repo, tok.sp_model_file)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
        tried.append(f"the Hugging Face cache of {tok.hf_repo}")
        if allow_download or (allow_download is None and not _offline()):
            try:
                from huggingface_hub import hf_hub_download

                return Path(hf_hub_download(tok.hf_repo, tok.sp_model_file))
            except Exception as e:  # network, auth, missing file: all become one clear line
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise PixdexError(
                    f"cannot download the tokenizer {tok.hf_repo}/{tok.sp_model_file} ({first}); "
                    "pass the checkpoint directory holding it"
                ) from e
    if not tried:
        raise PixdexError(
            "SigLIP tokenizer: no sentencepiece model (give the checkpoint directory or set "
            "tokenizer.hf_repo)"
        )
    hint = (
        f" (fetch it with: huggingface-cli download {tok.hf_repo} {tok.sp_model_file})" if tok.hf_repo else ""
    )
    raise PixdexError(f"SigLIP tokenizer: {tok.sp_model_file} not found in {' or '.join(tried)}{hint}")


class SentencePieceTokenizer:
    """Callable ``list[str] -> np.ndarray int64 (N, context_length)`` over a sentencepiece model.

    ``config``: a ModelConfig (its ``tokenizer``) or a TokenizerConfig. ``model_dir``: the checkpoint
    directory holding ``spiece.model`` (or the model file itself); else the file of ``tokenizer.hf_repo`` is
    taken from the Hugging Face cache, or downloaded when it is not cached (``allow_download=None``: unless
    ``HF_HUB_OFFLINE`` is set; ``False``: never).
    """

    def __init__(
        self,
        config: Union[ModelConfig, TokenizerConfig],
        model_dir: Optional[Union[str, Path]] = None,
        allow_download: Optional[bool] = None,
    ):
        tok = config.tokenizer if isinstance(config, ModelConfig) else config
        if not isinstance(tok, TokenizerConfig):
            raise PixdexError(
                f"SentencePieceTokenizer needs a ModelConfig or TokenizerConfig, not {type(config)}"
            )
        if tok.clean not in CLEAN_MODES:
            raise PixdexError(
                f"the SigLIP tokenizer cannot clean text with {tok.clean!r} "
                f"(expected one of {', '.join(CLEAN_MODES)})"
            )
        if tok.context_length < 1:
            raise PixdexError(f"tokenizer context length must be positive, got {tok.context_length}")
        self.config = tok
        self.context_length = int(tok.context_length)
        self.clean = tok.clean
        self.model_file = _resolve_model_file(
            tok, Path(model_dir) if model_dir is not None else None, allow_download
        )
        try:
            import sentencepiece as spm
        except ImportError as e:  # pragma: no cover - sentencepiece is a dependency
            raise PixdexError("the SigLIP tokenizer needs the sentencepiece package") from e
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        except (OSError, RuntimeError) as e:
            raise PixdexError(f"{self.model_file}: not a sentencepiece model ({e})") from e
        self.vocab_size = int(self.sp.get_piece_size())
        self.unk_id = int(self.sp.unk_id())
        eos = int(self.sp.piece_to_id(EOS_PIECE))
        if eos == self.unk_id:
            eos = int(self.sp.eos_id())
        if eos < 0:
            raise PixdexError(f"{self.model_file}: the sentencepiece model has no {EOS_PIECE} token")
        self.eos_id = eos
        self.pad_id = eos  # SigLIP pads with </s> (big_vision pad_value=1, transformers and open_clip alike)
        self._unk_len = len(self.sp.encode(UNK_PIECE, out_type=str))
        log.debug(
            "sentencepiece tokenizer %s: vocab %d, eos %d", self.model_file, self.vocab_size, self.eos_id
        )

    # ------------------------------------------------------------------ pieces

    def _encode_span(self, text: str) -> list[str]:
        """Pieces of one span without special tokens (transformers' ``SiglipTokenizer._tokenize``)."""
        if self.clean == "siglip":
            text = canonicalize_siglip(text)
        pieces = self.sp.encode(UNK_PIECE + text, out_type=str)
        return pieces[self._unk_len :] if len(pieces) >= self._unk_len else pieces

    def pieces(self, text: str) -> list[str]:
        """The pieces of ``text`` (no EOS, no padding)."""
        if not isinstance(text, str):
            raise PixdexError(f"text to tokenize must be a string, got {type(text).__name__}")
        if self.clean == "canonicalize":
            text = canonicalize_open_clip(text)
        text = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        # special tokens written in the text stay tokens (canonicalization strips the spans around them;
        # open_clip's cleaning has removed '<' and '>' already)
        chunks = _SPECIAL_SPLIT.split(text)
        out: list[str] = []
        for i, chunk in enumerate(chunks):
            if not chunk:
                continue
            if i % 2 == 1:
                out.append(chunk)
            else:
                out.extend(self._encode_span(chunk))
        if len(out) > 1 and out[0] == SPIECE_UNDERLINE and out[1] in (EOS_PIECE, UNK_PIECE):
            out = out[1:]
        return out

    def encode(self, text: str) -> list[int]:
        """Token ids of one text: pieces cut to ``context_length - 1``, then EOS (unpadded)."""
        ids = [int(self.sp.piece_to_id(p)) for p in self.pieces(text)]
        ids = ids[: self.context_length - 1]
        if not ids or ids[-1] != self.eos_id:
            ids.append(self.eos_id)
        return ids

    def __call__(self, texts: Union[str, Iterable[str]], context_length: Optional[int] = None) -> np.ndarray:
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        ctx = self.context_length if context_length is None else int(context_length)
        if ctx != self.context_length:
            return self._with_context(ctx)(texts)
        out = np.full((len(texts), ctx), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = ids
        return out

    def _with_context(self, ctx: int) -> SentencePieceTokenizer:
        if ctx < 1:
            raise PixdexError(f"tokenizer context length must be positive, got {ctx}")
        clone = object.__new__(SentencePieceTokenizer)
        clone.__dict__.update(self.__dict__)
        clone.context_length = ctx
        return clone

    def __repr__(self) -> str:
        return (
            f"SentencePieceTokenizer({self.model_file.name}, vocab={self.vocab_size}, "
            f"context={self.context_length}, clean={self.clean!r})"
        )
