"""Helpers for the encoder tests: a tiny SentencePiece model, and code run in a fresh interpreter
(to see which modules an import path pulls in)."""

import io
import os
import subprocess
import sys

SIGLIP_SPECIAL_IDS = dict(pad_id=0, eos_id=1, unk_id=2, bos_id=-1)  # SigLIP's spiece.model layout


def train_spiece(lines, vocab_size: int = 30, **options) -> bytes:
    """The bytes of a unigram ``spiece.model`` trained on ``lines`` with SigLIP's special ids."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        minloglevel=2,
        num_threads=1,
        **SIGLIP_SPECIAL_IDS,
        **options,
    )
    return buf.getvalue()


def run_fresh_python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a new interpreter that sees the same packages as this one."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
