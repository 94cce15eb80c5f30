"""Which engine runs an encoder's towers: the one rule for ``--backend`` and ``--exact``.

- ``torch``: pixdex's own modules; on the CPU a wide ViT image tower runs its Linear layers in int8
  (:mod:`pixdex.encoders.int8`, checked against float32 on the first batch).
- ``onnx``: the towers exported to ONNX and run by ONNX Runtime in float32
  (:mod:`pixdex.encoders.onnx_backend`).
- ``onnx-int8``: as ``onnx``, with the image tower quantised by ONNX Runtime's dynamic int8 quantiser
  (checked against float32 on the first batch like the torch int8 tower).
- ``auto``: :func:`default_backend` (``onnx-int8`` where it applies, else ``torch``); a failure of the
  ONNX path (exporter, runtime) falls back to ``torch`` with a warning.

``exact`` forces float32 eager torch (no int8, no ONNX Runtime).
"""

from __future__ import annotations

import logging

from pixdex.errors import PixdexError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


def check_backend(backend: str, exact: bool = False) -> str:
    """The backend name, validated before any model loads (an unknown one is a PixdexError)."""
    b = (backend or "auto").strip().lower()
    if b not in BACKENDS:
        raise PixdexError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if exact and b not in ("auto", "torch"):
        raise PixdexError(f"--exact runs float32 torch; it cannot be combined with --backend {b}")
    if b.startswith("onnx"):
        from pixdex.encoders.onnx_backend import require

        require()
    return b


def default_backend(encoder) -> str:
    """``auto``'s choice for this encoder: ``onnx-int8`` for a wide transformer image tower on the CPU
    when ONNX Runtime is installed (``bench/encode_cpu.py``: the fastest path within cosine 0.999 of
    float32), else ``torch`` (whose int8 tower covers the same towers without ONNX Runtime)."""
    from pixdex.encoders import int8

    visual = getattr(getattr(encoder, "model", None), "visual", None)
    if (
        int8.enabled()
        and str(getattr(encoder, "device", "cpu")) == "cpu"
        and visual is not None
        and int8.is_wide_transformer(visual)
    ):
        from pixdex.encoders.onnx_backend import available

        if available():
            return "onnx-int8"
    return "torch"


def apply_backend(encoder, backend: str = "auto", exact: bool = False) -> str:
    """Set up ``encoder`` to run on ``backend``; returns what runs the image tower: ``float32``,
    ``int8``, ``onnx`` or ``onnx-int8``."""
    b = check_backend(backend, exact)
    if exact:
        return "float32"
    if b == "auto":
        b = default_backend(encoder)
        if b != "torch":
            try:
                return _apply(encoder, b)
            except (PixdexError, ImportError, OSError, RuntimeError) as e:  # the default must not fail a run
                log.warning("%s backend unavailable (%s); using torch", b, e)
                b = "torch"
    return _apply(encoder, b)


def _apply(encoder, b: str) -> str:
    if b == "torch":
        from pixdex.encoders.int8 import speed_up

        return "int8" if speed_up(encoder) else "float32"
    from pixdex.encoders.onnx_backend import use_onnx

    use_onnx(encoder, quantize=b == "onnx-int8")
    return b
