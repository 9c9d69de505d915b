"""Read the records of an offline W&B run file (``run-<id>.wandb``): the LevelDB-style log of protobuf
``Record`` messages that wandb writes (a ``:W&B`` header, 32 KiB blocks, 7-byte chunk headers)."""

from __future__ import annotations

import struct
from pathlib import Path

BLOCK = 32768


def _chunks(data: bytes):
    pos, buf = 7, b""  # ":W&B", a 2-byte magic, a 1-byte version
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""


def history(path: Path) -> list[dict[str, str]]:
    """The ``wandb.log`` rows of the run file, each ``{key: value_json}`` (nested keys joined by '/')."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    rows = []
    for raw in _chunks(data):
        rec = pb.Record()
        rec.ParseFromString(raw)
        if rec.WhichOneof("record_type") == "history":
            rows.append({i.key or "/".join(i.nested_key): i.value_json for i in rec.history.item})
    return rows
