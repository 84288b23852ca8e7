"""Text from a manifest (or a server) made safe to show: the one sanitiser.

A teammate's pyproject.toml can hold any Unicode. Printed raw, C0/C1 controls
drive the terminal (ESC sequences set the window title, clear the screen, and a
newline forges a `cfd:` line), and bidi controls reorder what the reader sees
(U+202E turns `gpj.exe` into `exe.jpg`). Every such character becomes a
visible `\\uXXXX`: readable on a terminal, and still valid inside JSON strings,
where it decodes back to the original.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False  # not typing's: importing typing is ~3 ms of `cfd --version`, which loads this module
if TYPE_CHECKING:
    from typing import TypeVar

    _Stream = TypeVar("_Stream")

# C0 and C1 controls, DEL; bidi embeddings/overrides/isolates and marks; line and
# paragraph separators; zero-width characters and the BOM (they hide text).
# Patterns, not compiled ones: `re` compiles each on first use (~0.3 ms for these ranges),
# and most hook runs print nothing.
_INVISIBLE = "\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff"
_UNSAFE = f"[\x00-\x1f{_INVISIBLE}]"
# The same, but newline and tab pass: for whole blocks of output (the CLI's streams).
_UNSAFE_IN_BLOCK = f"[\x00-\x08\x0b-\x1f{_INVISIBLE}]"


def _escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group(0)):04x}"


def sanitize(text: str) -> str:
    """`text` on one line with every control, bidi or invisible character shown as `\\uXXXX`."""
    return re.sub(_UNSAFE, _escape, text)


def sanitize_block(text: str) -> str:
    """As `sanitize`, but newlines and tabs pass (text that is already several lines)."""
    return re.sub(_UNSAFE_IN_BLOCK, _escape, text)


def has_unsafe(text: str) -> bool:
    return re.search(_UNSAFE, text) is not None


class SanitizingStream:
    """A text stream that passes everything written through `sanitize_block`."""

    def __init__(self, stream: object) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(sanitize_block(text))  # type: ignore[attr-defined]
        return len(text)

    def __getattr__(self, name: str) -> object:
        return getattr(self.stream, name)


def unsanitized(stream: _Stream) -> _Stream:
    """The stream below a SanitizingStream (for a renderer that writes its own escape codes)."""
    return stream.stream if isinstance(stream, SanitizingStream) else stream  # type: ignore[return-value]
