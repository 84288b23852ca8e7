"""One small hierarchy of errors; each carries the remedy a user can act on.

The CLI turns any CfdError into one line on stderr (plus its hint) and an exit
code, never a traceback.
"""

from __future__ import annotations

import errno


class CfdError(Exception):
    """Base error: `message` says what went wrong, `hint` what to do next."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}; {self.hint}"


class ConfigError(CfdError):
    """A setting has a value cfd cannot use."""


class EnvironmentNotFound(CfdError):
    """No `.cec` repository / pyproject.toml with [tool.comfydock] was found."""


class ManifestError(CfdError):
    """pyproject.toml cannot be read as a manifest at all (bad TOML, bad bytes)."""


class IndexError_(CfdError):
    """The SQLite model index cannot be opened or has a schema we must not touch."""


class UnsafeManifestValue(CfdError):
    """A path or URL from a (teammate's) manifest would leave its sandbox."""


def disk_message(exc: OSError, what: str) -> str:
    """One line for a failed write of `what` (a full disk said as such)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"disk full while writing {what}"
    if exc.errno == errno.EFBIG:
        return f"file too large for the file system while writing {what}"
    return f"cannot write {what}: {exc.strerror or exc}"
