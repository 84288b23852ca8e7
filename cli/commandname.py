"""Which `cfd` a shell runs: ComfyDock's CLI also installs a console script called `cfd`.

cfd is installed under a second, unambiguous name too (`comfy-model-sync`); this
says when the `cfd` first on PATH is not this installation, so a user is told
instead of silently running the other tool. Hooks are unaffected: they record
this installation's Python, not a name on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

NAME = "cfd"
UNAMBIGUOUS_NAME = "comfy-model-sync"


def own_scripts() -> set[Path]:
    """This installation's console scripts (pipx/uv link to them; realpath sees through)."""
    scripts = Path(sys.executable).parent
    return {(scripts / name).resolve() for name in (NAME, UNAMBIGUOUS_NAME)}


def other_cfd_on_path(path: str | None = None) -> Path | None:
    """The `cfd` a shell would run, when it is not this installation's; None otherwise."""
    found = shutil.which(NAME, path=os.environ.get("PATH", os.defpath) if path is None else path)
    if found is None:
        return None
    return None if Path(found).resolve() in own_scripts() else Path(found)


def shadow_note(path: str | None = None) -> str | None:
    """One line for a user whose `cfd` is another program (e.g. ComfyDock's CLI)."""
    other = other_cfd_on_path(path)
    if other is None:
        return None
    return (
        f"note: `{NAME}` on your PATH is another program ({other}, e.g. ComfyDock's CLI); "
        f"run this one as `{UNAMBIGUOUS_NAME}` or {Path(sys.executable).parent / UNAMBIGUOUS_NAME}"
    )
