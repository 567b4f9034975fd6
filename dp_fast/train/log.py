"""Training logs: JSON lines, truncated back to the checkpoint on resume (the curves are drawn from them
by curves.py, the experiment trackers are fed from them by tracker.py)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List


class JsonLinesLog:
    """Append-only JSON-lines file; `offset()` is saved in checkpoints and `truncate(offset)` on resume
    drops the rows written after that checkpoint (they are written again as training replays)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch(exist_ok=True)

    def write(self, row: Dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, allow_nan=True) + "\n")

    def offset(self) -> int:
        return self.path.stat().st_size

    def truncate(self, offset: int) -> None:
        size = self.path.stat().st_size
        if offset > size:
            raise ValueError(f"{self.path}: checkpoint says {offset} bytes, file has {size}")
        with open(self.path, "r+b") as f:
            f.truncate(offset)

    def rows(self, start: int = 0) -> List[Dict]:
        """The rows from byte offset `start` (an earlier `offset()`) to the end."""
        return read_jsonl(self.path, start)


def read_jsonl(path, start: int = 0) -> List[Dict]:
    out = []
    with open(path, "rb") as f:  # binary: `start` is a byte offset
        f.seek(start)
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out
