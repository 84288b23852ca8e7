"""A hook exits 0 when git gave it no stdout/stderr (`git pull 2>&-`: sys.stdout is None)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_hook_exits_0_with_its_output_streams_closed(tmp_path: Path, cfd_env: dict[str, str]) -> None:
    # `git pull 2>&-`: git hands a hook its stderr as stdout too, so both are closed and Python sets
    # sys.stdout and sys.stderr to None. A squash merge: nothing to do, nothing printed.
    ran = subprocess.run(["sh", "-c", 'exec "$0" -m cfd.hooks.runtime post-merge 1 >&- 2>&-', sys.executable],
                         cwd=tmp_path, env=cfd_env, timeout=60)
    assert ran.returncode == 0
