"""The hook shim: render the POSIX sh template, and recognise our own hooks.

Like pre-commit, a hook is ours when it carries our ID line; its version line
says whether it is current. PRIOR_IDS lists ID lines of earlier releases so
they are recognised and upgraded too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .runtime import HOOK_NAMES

SHIM_VERSION = 3  # 2: the fast path checks git's output (a newline in the repository path); 3: python -P
CURRENT_ID = "4b1d7c2e-cfd-model-sync"
PRIOR_IDS: tuple[str, ...] = ()
LEGACY_SUFFIX = ".legacy"

_ID_RE = re.compile(r"^# cfd-hook-id: (\S+)$", re.MULTILINE)
_VERSION_RE = re.compile(r"^# cfd-hook-version: (\d+)$", re.MULTILINE)
_PYTHON_RE = re.compile(r"^CFD_PYTHON='((?:[^']|'\\'')*)'$", re.MULTILINE)


def _template() -> str:
    return resources.files("cfd.hooks").joinpath("shim.sh").read_text(encoding="utf-8")


def sh_quote_inner(value: str) -> str:
    """Text to place between single quotes in sh."""
    return value.replace("'", "'\\''")


def render_shim(hook: str, python: str) -> str:
    if hook not in HOOK_NAMES:
        raise ValueError(f"not a hook cfd installs: {hook}")
    return (
        _template()
        .replace("@HOOK@", hook)
        .replace("@PYTHON@", sh_quote_inner(python))
        .replace("@VERSION@", str(SHIM_VERSION))
    )


@dataclass(frozen=True)
class ShimInfo:
    version: int
    python: str | None

    @property
    def current(self) -> bool:
        return self.version == SHIM_VERSION


def read_shim(path: Path) -> ShimInfo | None:
    """Our hook's version and recorded interpreter; None when the file is not ours."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    found = _ID_RE.search(head)
    if not found or found.group(1) not in (CURRENT_ID, *PRIOR_IDS):
        return None
    version = _VERSION_RE.search(head)
    python = _PYTHON_RE.search(head)
    return ShimInfo(
        version=int(version.group(1)) if version else 0,
        python=python.group(1).replace("'\\''", "'") if python else None,
    )


def is_ours(path: Path) -> bool:
    return read_shim(path) is not None
