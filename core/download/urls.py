"""URL hygiene: which host a URL really reaches, and what of it may be printed.

Parsers disagree on authorities that RFC 3986 does not allow: for
`http://evil.example\\@huggingface.co/x` urllib.parse says huggingface.co while
urllib3 (and so requests) connects to evil.example. `target_of` therefore
accepts only an authority made of RFC 3986 characters (ASCII, no backslash, no
whitespace, one `@` at most, no percent-encoding in the host) on which both
readings agree; every check (scheme, token scope, private addresses) and every
printed URL is based on that one reading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_PORTS = {"http": 80, "https": 443, "s3": 0}  # s3://bucket/key names a mirror object (no port)
# A query parameter whose name looks like it carries a credential (S3/GCS/Azure signed URLs,
# Hugging Face and Civitai tokens, passwords, API keys, sessions).
_SECRET_PARAMS = re.compile(
    r"token|secret|passw|pwd|signature|credential|auth|session|api[-_]?key|(?:^|[-_])(?:key|sig)$|^(?:sig|key|code)$",
    re.I,
)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_AUTHORITY_RE = re.compile(
    r"(?:(?P<userinfo>(?:[A-Za-z0-9._~!$&'()*+,;=:-]|%[0-9A-Fa-f]{2})*)@)?"
    r"(?P<host>[A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])"
    r"(?::(?P<port>[0-9]{0,5}))?"
)
# Text that looks like a URL inside a message (errors end up in output, the marker and JSON).
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


class BadAuthority(ValueError):
    """The URL's host part is not one every HTTP client reads the same way."""


@dataclass(frozen=True)
class Target:
    """Where a URL connects: scheme, host (lower case, IPv6 without brackets) and port."""

    scheme: str
    host: str
    port: int
    userinfo: str | None

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def netloc(self) -> str:
        """host[:port] as printed: the port only when it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if DEFAULT_PORTS.get(self.scheme) == self.port else f"{host}:{self.port}"


def _authority(url: str) -> tuple[str, str]:
    match = _SCHEME_RE.match(url)
    if not match:
        raise BadAuthority("it has no scheme://host")
    rest = url[match.end():]
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    return match.group(1).lower(), rest[:end]


def _authority_problem(authority: str) -> str:
    if not authority.rpartition("@")[2].partition(":")[0]:
        return "it names no host"
    for char, name in (("\\", "a backslash"), ("@", "more than one '@'"), ("%", "a percent-encoded host")):
        if authority.count(char) > (1 if char == "@" else 0) or (char == "%" and "%" in authority.rpartition("@")[2]):
            return f"its host part holds {name}, which HTTP clients read differently (the real host is unclear)"
    return "its host part holds characters a URL may not have there, which HTTP clients read differently"


def target_of(url: str) -> Target:
    """The scheme, host and port `url` connects to; BadAuthority if parsers could disagree."""
    scheme, authority = _authority(url)
    match = _AUTHORITY_RE.fullmatch(authority)
    if not match:
        raise BadAuthority(_authority_problem(authority))
    host = match.group("host").lower().strip("[]")
    port_text = match.group("port")
    port = int(port_text) if port_text else DEFAULT_PORTS.get(scheme, 0)
    if port > 65535:
        raise BadAuthority("its port is out of range")
    try:  # the standard library must read the same host and port
        parts = urlsplit(url)
        agrees = (parts.hostname or "") == host and (parts.port or DEFAULT_PORTS.get(scheme, 0)) == port
    except ValueError:
        agrees = False
    if not agrees:
        raise BadAuthority("its host part reads differently to different URL parsers")
    return Target(scheme, host, port, match.group("userinfo"))


def redact_url(url: str) -> str:
    """The URL as it may be printed: credentials and secret-looking query values removed,
    and the host shown only as the one a connection would reach."""
    try:
        target = target_of(url)
        parts = urlsplit(url)
    except ValueError:
        scheme = _SCHEME_RE.match(url)
        return f"{scheme.group(1).lower()}://<invalid host>" if scheme else _without_authority(url)
    netloc = ("***@" if target.userinfo is not None else "") + target.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, _redact_query(parts.query), ""))


def _redact_query(query: str) -> str:
    if not query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "***" if is_secret_param(k) else v) for k, v in pairs], safe="*")


def _without_authority(url: str) -> str:
    """`data:…`-like URLs by their scheme alone; a path?query (urllib3's log lines) with its query redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    if parts.scheme:
        return f"{parts.scheme.lower()}:…" if parts.scheme.isascii() and parts.scheme.isalnum() else "<invalid URL>"
    if parts.netloc:
        return "<invalid URL>"
    return urlunsplit(("", "", parts.path, _redact_query(parts.query), ""))


def is_secret_param(name: str) -> bool:
    return _SECRET_PARAMS.search(name) is not None


def has_credentials(url: str) -> bool:
    """The URL holds a user:password or a secret-looking query parameter."""
    try:
        parts = urlsplit(url)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return True
    return "@" in parts.netloc or any(is_secret_param(k) for k, _ in pairs)


def redact_urls_in(text: str) -> str:
    """`text` with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def host_of(url: str) -> str:
    """The host `url` connects to, as printed ("" when it has none a client agrees on)."""
    try:
        return target_of(url).netloc
    except ValueError:
        return ""
