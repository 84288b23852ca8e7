"""Credentials for Hugging Face and Civitai, and which hosts may receive them.

Each token goes only to its own service's hosts (never to a URL a manifest
points elsewhere) and is never printed: `Tokens` hides the values from repr
and messages name a token by where it came from ("HF_TOKEN"), not its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

HF_HOSTS: tuple[str, ...] = ("huggingface.co", "hf.co")
CIVITAI_HOSTS: tuple[str, ...] = ("civitai.com",)


@dataclass(frozen=True)
class Tokens:
    hf: str | None = field(default=None, repr=False)
    civitai: str | None = field(default=None, repr=False)
    hf_origin: str | None = None  # where the HF token came from, for messages
    civitai_origin: str | None = None


def _hf_token_file(environ: Mapping[str, str]) -> Path:
    # huggingface_hub's lookup: HF_TOKEN_PATH, else $HF_HOME/token, HF_HOME defaulting
    # to $XDG_CACHE_HOME/huggingface or ~/.cache/huggingface.
    if environ.get("HF_TOKEN_PATH"):
        return Path(environ["HF_TOKEN_PATH"]).expanduser()
    home = environ.get("HF_HOME")
    if not home:
        cache = environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
        home = os.path.join(cache, "huggingface")
    return Path(home).expanduser() / "token"


def load_tokens(environ: Mapping[str, str] | None = None, workspace_civitai_token: str | None = None) -> Tokens:
    environ = os.environ if environ is None else environ
    hf = hf_origin = None
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if environ.get(name, "").strip():
            hf, hf_origin = environ[name].strip(), name
            break
    if hf is None:
        path = _hf_token_file(environ)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            text = ""
        if text:
            hf, hf_origin = text, f"the token file {path}"
    civitai = civitai_origin = None
    for name in ("CIVITAI_API_KEY", "CIVITAI_API_TOKEN"):
        if environ.get(name, "").strip():
            civitai, civitai_origin = environ[name].strip(), name
            break
    if civitai is None and workspace_civitai_token:
        civitai, civitai_origin = workspace_civitai_token.strip(), "the ComfyDock workspace (api_credentials.civitai_token)"
    return Tokens(hf, civitai, hf_origin, civitai_origin)


def hf_hosts_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The Hugging Face hosts, plus the host of HF_ENDPOINT (a mirror, as huggingface_hub has it)."""
    environ = os.environ if environ is None else environ
    endpoint = environ.get("HF_ENDPOINT", "").strip()
    if not endpoint:
        return HF_HOSTS
    from .urls import host_of

    host = host_of(endpoint if "://" in endpoint else f"https://{endpoint}")
    return HF_HOSTS + (host,) if host and host not in HF_HOSTS else HF_HOSTS


def host_in(host: str, domains: tuple[str, ...]) -> bool:
    """`host` is one of `domains` or a subdomain of one."""
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in domains)


def service_of(host: str, hf_hosts: tuple[str, ...] = HF_HOSTS, civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS) -> str | None:
    if host_in(host, hf_hosts):
        return "huggingface"
    if host_in(host, civitai_hosts):
        return "civitai"
    return None


def auth_header(tokens: Tokens, service: str | None) -> dict[str, str]:
    """The Authorization header for a request to `service` (empty if none applies)."""
    token = tokens.hf if service == "huggingface" else tokens.civitai if service == "civitai" else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_hint(tokens: Tokens, service: str | None, status: int) -> str:
    """What the user should fix after a 401/403 from `service`."""
    if service == "huggingface":
        if tokens.hf:
            return (f"the Hugging Face token from {tokens.hf_origin} was refused; check it can read this repository "
                    "(gated models need their license accepted on huggingface.co)")
        return "set HF_TOKEN (or run `huggingface-cli login`) with a token that can read this repository"
    if service == "civitai":
        if tokens.civitai:
            return f"the Civitai token from {tokens.civitai_origin} was refused; check it on civitai.com"
        return "set CIVITAI_API_KEY (or the ComfyDock workspace's Civitai token) to a Civitai API key"
    return "this server wants credentials cfd does not send; fix the source URL in pyproject.toml"
