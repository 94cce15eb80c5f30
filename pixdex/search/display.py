"""File names as shown to a person: invisible characters that change how a name reads made visible.

A file name may hold bidirectional controls (U+202E RIGHT-TO-LEFT OVERRIDE makes ``photo_<RLO>gpj.exe``
read as ``photo_exe.jpg``), control characters (newlines, escape sequences) and line separators.
:func:`visible` replaces each by the text ``\\uXXXX``, so the name shown is the name on disk, letter for
letter. Letters of every script, right-to-left ones included, and emoji joiners are left alone: they
are what the name says. The exact path stays available beside it (the API's ``path``).
"""

from __future__ import annotations

import re

# C0 and C1 controls and DEL; Arabic letter mark; LRM/RLM; line and paragraph separators;
# LRE/RLE/PDF/LRO/RLO; LRI/RLI/FSI/PDI.
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def visible(text: str) -> str:
    """``text`` with bidi controls and other control characters written as visible ``\\uXXXX``."""
    return _INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
