"""Text from a call, an agent or a controller, made safe to print on a terminal."""

from __future__ import annotations

import unicodedata

_BIDI_AND_INVISIBLE = {0x061C, 0x200B, 0x200E, 0x200F, 0x2028, 0x2029, 0x202A, 0x202B,
                       0x202C, 0x202D, 0x202E, 0x2060, 0x2066, 0x2067, 0x2068, 0x2069, 0xFEFF}
_JOINERS = {0x200C, 0x200D}
"""Zero-width (non-)joiners: format characters that Persian, Indic scripts and emoji need."""


def printable(value: object) -> str:
    """``str(value)`` safe to print on a terminal: one line, no control sequences.

    Every control character (C0 including tab and newline, DEL, C1 — ESC and
    CSI start terminal escapes, CR and BS overwrite what was printed) and every
    bidirectional or zero-width format character (which reorder or hide text)
    is written as a Python escape (``\\x1b``, ``\\n``, ``\\u202e``); everything
    else — accents, emoji, and the zero-width joiners that scripts and emoji
    need — is kept. Use it on anything a call, an
    agent or a controller supplied: transcripts, names, messages, errors.
    """
    text = str(value)
    if text.isprintable() and not any(ord(ch) in _BIDI_AND_INVISIBLE for ch in text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if code in _BIDI_AND_INVISIBLE or (code not in _JOINERS and unicodedata.category(ch)
                                           in ("Cc", "Cf", "Zl", "Zp")):
            escaped = ch.encode("unicode_escape").decode("ascii")
            out.append(escaped if escaped != ch else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)
