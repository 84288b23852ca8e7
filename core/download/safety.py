"""Guards for values that come from a teammate's (untrusted) manifest.

A pulled pyproject.toml decides which files we write and which servers we
contact. Paths must stay inside the models directory, only http(s) is fetched,
and, unless the user allows private networks, no request may reach loopback,
private, link-local, multicast or reserved addresses (a manifest must not turn
cfd into a probe of the user's LAN or cloud metadata service).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import UnsafeManifestValue
from ..state import MODELS_DIR_STATE
from ..text import has_unsafe
from .urls import BadAuthority, redact_url, target_of

_DRIVE = re.compile(r"^[A-Za-z]:")
# Names Windows cannot hold or reads as something else: devices (CON, NUL, COM1, ... even with
# an extension), an alternate data stream (`name:stream`), characters it forbids, and a
# trailing dot or space (silently dropped, so `a.` and `a` would be one file). A shared
# environment is checked out on every teammate's system, so these are refused everywhere.
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|conin\$|conout\$|com[0-9¹²³]|lpt[0-9¹²³]) *(\..*)?\Z", re.I)
_WINDOWS_FORBIDDEN = re.compile(r'[<>:"|?*]|[. ]\Z')
# The staging area and locks live in <models_dir>/.cfd; a manifest may not write there
# (compared case-insensitively: `.CFD` is the same folder on macOS and Windows).
ALLOWED_SCHEMES = ("http", "https")


NAME_MAX = 255  # bytes in one path component (ext4, APFS, NTFS in UTF-16 units)
PATH_MAX = 1024  # bytes below the models dir: real model paths are far shorter


def _bad_chars(text: str) -> bool:
    return any(ord(ch) < 32 or 0x7f <= ord(ch) <= 0x9f for ch in text)


def _windows_hostile(name: str) -> bool:
    return bool(_WINDOWS_RESERVED.match(name) or _WINDOWS_FORBIDDEN.search(name))


def _shown(text: str) -> str:
    """A manifest value for a message: quoted, escaped, and never longer than a line."""
    return repr(text) if len(text) <= 120 else repr(text[:100]) + f"… ({len(text)} characters)"


def safe_filename(filename: str) -> str:
    """A bare file name: no separators, no `..`, no control characters."""
    if not filename or filename in (".", "..") or "/" in filename or "\\" in filename or _bad_chars(filename):
        raise UnsafeManifestValue(
            f"refusing model filename {_shown(filename)}: it must be a plain file name",
            "fix the entry in pyproject.toml (ask who committed it)",
        )
    if _DRIVE.match(filename) or _windows_hostile(filename):
        raise UnsafeManifestValue(f"refusing model filename {_shown(filename)}: Windows cannot hold this name",
                                  "fix the entry in pyproject.toml")
    if len(filename.encode("utf-8", "surrogatepass")) > NAME_MAX:
        raise UnsafeManifestValue(f"refusing model filename {_shown(filename)}: longer than {NAME_MAX} bytes",
                                  "fix the entry in pyproject.toml")
    return filename


def safe_relative_path(relative_path: str, filename: str | None = None) -> str:
    """`relative_path` normalised to forward slashes, guaranteed to stay below the models dir.

    Lexical check only: symlinked category folders made by the user are fine.
    """
    if filename is not None:
        safe_filename(filename)
    text = (relative_path or "").replace("\\", "/")
    problem = None
    if not text.strip():
        problem = "it is empty"
    elif text.startswith("/") or _DRIVE.match(text):
        problem = "it is absolute"
    elif _bad_chars(text):
        problem = "it contains control characters"
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if problem is None:
        if ".." in parts:
            problem = "it climbs out with '..'"
        elif not parts:
            problem = "it names no file"
        elif parts[0].casefold() == MODELS_DIR_STATE:
            problem = "it points into cfd's own .cfd folder"
        elif any(_DRIVE.match(p) or _windows_hostile(p) for p in parts):
            problem = "it contains a name Windows cannot hold (a device name, ':', a trailing dot or space, ...)"
        elif any(len(p.encode("utf-8", "surrogatepass")) > NAME_MAX for p in parts):
            problem = f"a name in it is longer than {NAME_MAX} bytes"
        elif len(text.encode("utf-8", "surrogatepass")) > PATH_MAX:
            problem = f"it is longer than {PATH_MAX} bytes"
    if problem:
        raise UnsafeManifestValue(
            f"refusing model path {_shown(relative_path or '')}: {problem}; paths must stay inside the models directory",
            "fix the entry in pyproject.toml (ask who committed it)",
        )
    return "/".join(parts)


def target_path(models_dir: str | os.PathLike[str], relative_path: str) -> Path:
    return Path(models_dir).joinpath(*safe_relative_path(relative_path).split("/"))


def check_url(url: str) -> str:
    """The URL itself if cfd may fetch it, else UnsafeManifestValue.

    http/https only, and an authority every HTTP client reads the same way (see
    urls.target_of): the host checked here is the host connected to.
    """
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        scheme = ""
    if scheme and scheme not in ALLOWED_SCHEMES:
        raise UnsafeManifestValue(
            f"refusing source {_shown(redact_url(url))}: only http and https URLs are downloaded",
            "fix the source in pyproject.toml",
        )
    if has_unsafe(url) or " " in url:
        raise UnsafeManifestValue(f"refusing source {_shown(redact_url(url))}: not a valid URL", "fix the source in pyproject.toml")
    try:
        target = target_of(url)
    except BadAuthority as exc:
        raise UnsafeManifestValue(f"refusing source {_shown(redact_url(url))}: {exc}",
                                  "fix the source in pyproject.toml (ask who committed it)") from None
    if target.scheme not in ALLOWED_SCHEMES:
        raise UnsafeManifestValue(
            f"refusing source {_shown(redact_url(url))}: only http and https URLs are downloaded",
            "fix the source in pyproject.toml",
        )
    return url


def is_public_address(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for private, loopback, link-local, reserved, shared (100.64/10) ...
    return ip.is_global and not ip.is_multicast


def check_host(host: str, port: int, *, allow_private: bool) -> None:
    """Resolve `host` and refuse it if any address it resolves to is not public.

    Every address is checked, since the connection may use any of them.
    (DNS could answer differently a moment later; this narrows, not closes, that gap.)
    """
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise ConnectionError(f"cannot resolve {host}: {getattr(exc, 'strerror', None) or exc}") from None
    for info in infos:
        address = str(info[4][0])
        if not is_public_address(address):
            raise UnsafeManifestValue(
                f"refusing to download from {host} ({address}): it is a loopback, private or link-local address",
                "if this server is yours, allow it with `git config cfd.allowPrivateNetworks true`",
            )
