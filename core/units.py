"""Byte counts for people: the one size formatter (CLI, hooks, engine messages)."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def human_size(size: float | None) -> str:
    """`512 B`, `3.6 MiB`, `1.2 TiB` (binary units); "size unknown" for None."""
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
