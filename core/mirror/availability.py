"""Models the manifest gives no source for, that the team mirror holds: downloadable after all."""

from __future__ import annotations

from typing import Any

from ..sync.missing import MissingReport

MAX_LOOKUPS = 200  # HEADs per report: a manifest of thousands of sourceless models must not stall `cfd status`


def mark_mirrored(report: MissingReport, env: Any) -> MissingReport:
    """`report` with every sourceless missing model the mirror has marked downloadable.

    No mirror configured: the report itself, and nothing imported. A mirror that is out
    (credentials, endpoint) changes nothing: the engine says why when it is asked to download."""
    unavailable = [info for info in report.missing if not info.can_download and info.model.size is not None]
    if not unavailable or not env.settings["cfd.mirror"]:
        return report
    from .reading import engine_mirror

    mirror = engine_mirror(env)
    if mirror is None:
        return report
    found = {info.hash for info in unavailable[:MAX_LOOKUPS] if mirror.has(info.hash, info.model.size or 0)}
    if not found:
        return report
    missing = tuple(info._replace(can_download=True) if info.hash in found else info for info in report.missing)
    return report._replace(missing=missing)
