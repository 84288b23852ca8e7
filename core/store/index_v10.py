"""ComfyGit 0.7's index (schema version 10): what differs from ComfyDock's (9).

The tables are the same; the `models.hash` key is the xxh3 sample. ComfyGit drops every
table of an index whose `schema_info` version it does not expect, and writes its own
version into an empty `schema_info`: so cfd creates the tables without a version row and
never writes one (ComfyGit adds 10 when it first opens the file).
"""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMA_VERSION = 10


def source_type(url: str) -> str:
    """0.7.1's `detect_url_type`: the exact host or a subdomain of it, else "custom"."""
    try:
        host = (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return "custom"
    for kind, domains in (("civitai", ("civitai.com",)), ("huggingface", ("huggingface.co", "hf.co"))):
        if any(host == d or host.endswith("." + d) for d in domains):
            return kind
    return "custom"
