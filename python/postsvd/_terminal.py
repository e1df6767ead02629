"""Text from files and folders (tensor names, model_type, file names) made safe to print.

A name read from a checkpoint may hold newlines, ANSI escape sequences or
Unicode direction overrides; printed raw, it could clear the screen, move the
cursor or add fake lines to the output. :func:`printable` escapes them, and
every place that prints such text to a terminal goes through it."""
from __future__ import annotations

import unicodedata

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Unicode categories that must not reach a terminal: controls (C0, DEL, C1 with ESC and CSI), format
# characters (direction overrides, zero-width), line/paragraph separators, lone surrogates (undecodable
# bytes of a file name).
_UNSAFE_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")


def _escape_char(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text) -> str:
    """`text` (str() of any value) with every control, format or separator character
    escaped as ``\\n``, ``\\x1b``, ``\\u202e``, ...; other text, non-ASCII letters
    included, stays as it is. The result is one line."""
    text = str(text)
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(_escape_char(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)
