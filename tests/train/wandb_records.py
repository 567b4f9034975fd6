"""Read an offline wandb run file (`run-<id>.wandb`) back, for the tracker tests.

The file is wandb's record log: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
each with a 7-byte header (crc32c, length, type: 1 full, 2 first, 3 middle, 4 last; a block's tail
shorter than a header is zero padding), the chunks of a record concatenated holding a serialized
wandb.proto Record. wandb itself no longer ships a Python reader for it.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

BLOCK = 32768
HEADER = 7


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a wandb run file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        pos += HEADER
        if kind == 0 and n == 0:  # padding to the block's end
            pos += left - HEADER
            continue
        chunk, pos = data[pos:pos + n], pos + n
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def read_run(path) -> Tuple[Dict, List[Dict]]:
    """(the run record's fields: run_id, project, display_name, group, tags; the history rows, each a
    {key: value} dict with wandb's `_step`) of one run file."""
    from wandb.proto import wandb_internal_pb2 as pb

    run, history = {}, []
    for raw in _chunks(Path(path).read_bytes()):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run = {"run_id": r.run_id, "project": r.project, "display_name": r.display_name, "group": r.run_group,
                   "tags": list(r.tags)}
        elif kind == "history":
            history.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return run, history
