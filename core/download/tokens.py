"""Credentials for Hugging Face and Civitai, and which hosts may receive them.

Each token goes only over https to its own service's hosts and ports (never
to a URL a manifest points elsewhere, never in cleartext) and is never printed: `Tokens` hides the values from repr
and messages name a token by where it came from ("HF_TOKEN"), not its value.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .urls import Target

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


def load_tokens(
    environ: Mapping[str, str] | None = None,
    workspace_civitai_token: str | None = None,
    workspace_hf_token: str | None = None,
    workspace_name: str = "ComfyDock",
) -> Tokens:
    """Environment first, then the HF token file, then the workspace's `api_credentials`
    (ComfyGit 0.7's order for the places that need no extra dependency)."""
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
    if hf is None and workspace_hf_token:
        hf, hf_origin = workspace_hf_token.strip(), f"the {workspace_name} workspace (api_credentials.huggingface_token)"
    civitai = civitai_origin = None
    for name in ("CIVITAI_API_KEY", "CIVITAI_API_TOKEN"):
        if environ.get(name, "").strip():
            civitai, civitai_origin = environ[name].strip(), name
            break
    if civitai is None and workspace_civitai_token:
        civitai, civitai_origin = workspace_civitai_token.strip(), f"the {workspace_name} workspace (api_credentials.civitai_token)"
    return Tokens(hf, civitai, hf_origin, civitai_origin)


def hf_hosts_from_env(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The Hugging Face hosts, plus HF_ENDPOINT's "host:port" (a mirror, as huggingface_hub has it)."""
    environ = os.environ if environ is None else environ
    endpoint = environ.get("HF_ENDPOINT", "").strip()
    if not endpoint:
        return HF_HOSTS
    from .urls import target_of

    try:
        target = target_of(endpoint if "://" in endpoint else f"https://{endpoint}")
    except ValueError:
        return HF_HOSTS  # an HF_ENDPOINT no client reads the same way gets no token
    entry = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
    return HF_HOSTS + (entry,)


def _host_and_port(entry: str) -> tuple[str, int]:
    """A host list entry: "host" (https on 443) or "host:port"."""
    if entry.startswith("["):
        host, _, port = entry[1:].partition("]")
        return host.lower(), int(port[1:]) if port.startswith(":") else 443
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host.lower(), int(port)
    return entry.lower(), 443


def host_in(host: str, domains: tuple[str, ...]) -> bool:
    """`host` is one of `domains` (ports ignored) or a subdomain of one."""
    host = host.lower().rstrip(".")
    names = [_host_and_port(d)[0] for d in domains]
    return any(host == d or host.endswith("." + d) for d in names)


def service_of(host: str, hf_hosts: tuple[str, ...] = HF_HOSTS, civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS) -> str | None:
    """Which service a host belongs to, for page-link rewriting and messages (not for tokens)."""
    if host_in(host, hf_hosts):
        return "huggingface"
    if host_in(host, civitai_hosts):
        return "civitai"
    return None


def token_service(target: Target, hf_hosts: tuple[str, ...] = HF_HOSTS,
                  civitai_hosts: tuple[str, ...] = CIVITAI_HOSTS) -> str | None:
    """The service whose token may go to `target`: over https only, to the service's own
    hosts (or their subdomains) on the port listed for them (443 unless one is given),
    the scheme/host/port comparison requests makes before keeping auth on a redirect."""
    if target.scheme != "https":
        return None
    for service, entries in (("huggingface", hf_hosts), ("civitai", civitai_hosts)):
        for entry in entries:
            host, port = _host_and_port(entry)
            if port == target.port and host_in(target.host, (host,)):
                return service
    return None


def auth_header(tokens: Tokens, service: str | None) -> dict[str, str]:
    """The Authorization header for a request to `service` (empty if none applies)."""
    token = tokens.hf if service == "huggingface" else tokens.civitai if service == "civitai" else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def token_hint(tokens: Tokens, service: str | None, status: int, sent: bool = True) -> str:
    """What the user should fix after a 401/403 from `service` (`sent`: whether its token went)."""
    if not sent and ((service == "huggingface" and tokens.hf) or (service == "civitai" and tokens.civitai)):
        return "cfd sends a token only over https to the service's own host and port; use an https source"
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
