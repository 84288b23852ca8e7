"""The team mirror's settings, read without importing any S3 client.

`mirror_config(env)` is None when no mirror is set, so a hook with nothing to do
never pays for boto3. The endpoint comes from cfd.mirror.endpoint, else from
AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL the way AWS's own SDKs read them, else AWS.
Credentials and region are left to the SDK's standard chain (environment,
AWS_PROFILE, ~/.aws files): cfd never reads, stores or prints them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..download.urls import BadAuthority, target_of

# S3's bucket naming rules (3-63 characters, lower case, digits, dots, hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9._-]+\Z")


def parse_mirror_url(value: str) -> tuple[str, str]:
    """`s3://bucket[/prefix]` -> (bucket, prefix ending in "/" or ""); ValueError says what is wrong."""
    text = value.strip()
    if not text.lower().startswith("s3://"):
        raise ValueError("expected s3://bucket or s3://bucket/prefix")
    bucket, _, prefix = text[5:].partition("/")
    if not _BUCKET.match(bucket):
        raise ValueError(f"{bucket!r} is not an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)")
    parts = [part for part in prefix.split("/") if part]
    if any(not _PREFIX_PART.match(part) or part in (".", "..") for part in parts):
        raise ValueError("the prefix may hold only letters, digits, '.', '_', '-' and '/'")
    return bucket, "".join(f"{part}/" for part in parts)


def parse_endpoint(value: str) -> str:
    """An http(s)://host[:port] URL (no credentials, no query); ValueError otherwise."""
    text = value.strip().rstrip("/")
    try:
        target = target_of(text)
    except BadAuthority as exc:
        raise ValueError(f"not a usable endpoint URL: {exc}") from None
    if target.scheme not in ("http", "https") or target.userinfo is not None or "?" in text or "#" in text:
        raise ValueError("expected http(s)://host[:port] without credentials")
    return text


@dataclass(frozen=True)
class MirrorConfig:
    bucket: str
    prefix: str  # "" or ending in "/"
    endpoint: str | None  # None: AWS itself
    publish: bool
    only: bool
    dialect: str = "comfydock"  # the environment's: which short hashes its aliases are keyed by

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def shown(self, key: str) -> str:
        """An object as `s3://bucket/key`: how messages and the staging sidecar name it."""
        return f"s3://{self.bucket}/{key}"

    @property
    def endpoint_host(self) -> str | None:
        """`host:port` of a configured endpoint (the one private address cfd then trusts)."""
        if self.endpoint is None:
            return None
        target = target_of(self.endpoint)
        return f"{target.host}:{target.port}"


def endpoint_from(setting: str | None, environ: Mapping[str, str]) -> str | None:
    for value in (setting, environ.get("AWS_ENDPOINT_URL_S3"), environ.get("AWS_ENDPOINT_URL")):
        if value:
            return parse_endpoint(value)
    return None


def mirror_config(env: Any, environ: Mapping[str, str] | None = None) -> MirrorConfig | None:
    """The mirror an Environment's settings name, or None (raises ConfigError for a bad value)."""
    settings = env.settings
    url = settings["cfd.mirror"]
    if not url:
        return None
    from ..errors import ConfigError

    environ = os.environ if environ is None else environ
    try:
        endpoint = endpoint_from(settings["cfd.mirror.endpoint"], environ)
    except ValueError as exc:
        raise ConfigError(f"AWS_ENDPOINT_URL(_S3) is not valid: {exc}", "fix it, or set cfd.mirror.endpoint") from None
    bucket, prefix = parse_mirror_url(url)
    dialect = getattr(getattr(env, "dialect", None), "name", "comfydock")
    return MirrorConfig(bucket, prefix, endpoint, bool(settings["cfd.mirror.publish"]), bool(settings["cfd.mirror.only"]), dialect)
