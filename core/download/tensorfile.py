"""The length a safetensors file declares for itself.

A safetensors file is an 8-byte little-endian header size N, N bytes of JSON
(`{"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`),
then the tensor data: its exact length is 8 + N + the largest `data_offsets` end.
That is how cfd tells a complete download of unknown size from one cut short.
"""

from __future__ import annotations

import json
import os
import struct

SUFFIX = ".safetensors"
_MAX_HEADER = 100 * 1024 * 1024  # the format's own limit (safetensors refuses bigger headers)


def is_safetensors_name(filename: str) -> bool:
    return filename.lower().endswith(SUFFIX)


def declared_length(fd: int, size: int) -> int | None:
    """The length the header at the start of `fd` declares, or None if it is not a safetensors header."""
    if size < 8:
        return None
    (header_size,) = struct.unpack("<Q", os.pread(fd, 8, 0))
    if not 2 <= header_size <= min(_MAX_HEADER, size - 8):
        return None
    raw = os.pread(fd, header_size, 8)
    if len(raw) != header_size:
        return None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    end = 0
    for name, tensor in header.items():
        if name == "__metadata__":
            continue
        offsets = tensor.get("data_offsets") if isinstance(tensor, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in offsets)
                and offsets[0] <= offsets[1]):
            return None
        end = max(end, offsets[1])
    return 8 + header_size + end


def safetensors_bytes(payload: bytes) -> bytes:
    """A valid safetensors file holding `payload` as one uint8 tensor (tests, the demo server)."""
    header = json.dumps({"data": {"dtype": "U8", "shape": [len(payload)], "data_offsets": [0, len(payload)]}}).encode()
    header += b" " * (-len(header) % 8)  # the format pads the header to 8 bytes
    return struct.pack("<Q", len(header)) + header + payload
