"""Training logs: JSON lines (truncated back to the checkpoint on resume) and a PNG of the curves.

The PNG is drawn with numpy and written with zlib (no matplotlib dependency): one panel for the losses
(train per step in blue, train mean per epoch in dark blue, validation in red, log scale), one for the
learning rate (green), with min/max labels in a tiny bitmap font.
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from ..atomic_file import atomic_write


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

    def rows(self) -> List[Dict]:
        return read_jsonl(self.path)


def read_jsonl(path) -> List[Dict]:
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


# ---------------------------------------------------------------------- PNG
def write_png(path, rgb: np.ndarray) -> None:
    """rgb: (H, W, 3) uint8 -> PNG file, written atomically."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with atomic_write(path) as tmp:
        tmp.write_bytes(png)


# 3x5 glyphs, rows top to bottom, 3 bits each
_FONT = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001010010010",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "-": "000000111000000",
    "+": "000010111010000", " ": "000000000000000", "=": "000111000111000", ":": "000010000010000",
    "A": "010101111101101", "B": "110101110101110", "C": "111100100100111", "D": "110101101101110",
    "E": "111100111100111", "F": "111100111100100", "G": "111100101101111", "H": "101101111101101",
    "I": "111010010010111", "K": "101101110101101", "L": "100100100100111", "M": "101111111101101",
    "N": "110101101101101", "O": "111101101101111", "P": "111101111100100", "R": "110101110101101",
    "S": "111100111001111", "T": "111010010010010", "U": "101101101101111", "V": "101101101101010",
    "W": "101101111111101", "X": "101101010101101", "Y": "101101010010010", "(": "010100100100010",
    ")": "010001001001010", "/": "001001010100100",
}


def _text(img: np.ndarray, x: int, y: int, s: str, color, scale: int = 2) -> None:
    for ch in s.upper():
        g = _FONT.get(ch, _FONT[" "])
        for i, bit in enumerate(g):
            if bit == "1":
                r, c = divmod(i, 3)
                y0, x0 = y + r * scale, x + c * scale
                img[max(y0, 0):max(y0 + scale, 0), max(x0, 0):max(x0 + scale, 0)] = color
        x += 4 * scale


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.1e}"


def _line(img, xs: np.ndarray, ys: np.ndarray, color, width: int = 1) -> None:
    h, w, _ = img.shape
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        px = np.clip(np.round(np.linspace(x0, x1, n)).astype(int), 0, w - 1)
        py = np.clip(np.round(np.linspace(y0, y1, n)).astype(int), 0, h - 1)
        for d in range(width):
            img[np.clip(py + d, 0, h - 1), px] = color
    if len(xs) == 1:
        x, y = int(round(xs[0])), int(round(ys[0]))
        img[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = color


Series = Tuple[str, Sequence[float], Sequence[float], Tuple[int, int, int]]


def _panel(img, box, title: str, series: List[Series], log_y: bool) -> None:
    x0, y0, x1, y1 = box
    img[y0:y1, x0] = img[y0:y1, x1] = 0
    img[y0, x0:x1 + 1] = img[y1, x0:x1 + 1] = 0
    _text(img, x0, y0 - 14, title, (0, 0, 0))
    pts = [(np.asarray(xs, float), np.asarray(ys, float), c) for _, xs, ys, c in series if len(xs)]
    pts = [(xs[m], ys[m], c) for xs, ys, c in pts for m in [np.isfinite(ys) & (ys > 0 if log_y else True)] if m.any()]
    if not pts:
        return
    f = np.log10 if log_y else (lambda a: a)
    allx = np.concatenate([p[0] for p in pts])
    ally = np.concatenate([p[1] for p in pts])
    xmin, xmax = float(allx.min()), float(allx.max())
    ymin, ymax = float(f(ally).min()), float(f(ally).max())
    if xmax <= xmin:
        xmax = xmin + 1
    if ymax <= ymin:
        ymax = ymin + 1e-6
    for xs, ys, color in pts:
        px = x0 + 4 + (xs - xmin) / (xmax - xmin) * (x1 - x0 - 8)
        py = y1 - 4 - (f(ys) - ymin) / (ymax - ymin) * (y1 - y0 - 8)
        _line(img, px, py, color)
    top = 10 ** ymax if log_y else ymax
    bottom = 10 ** ymin if log_y else ymin
    _text(img, x0 + 4, y0 + 4, _fmt(top), (80, 80, 80))
    _text(img, x0 + 4, y1 - 14, _fmt(bottom), (80, 80, 80))
    _text(img, x1 - 4 - 8 * len(_fmt(xmax)), y1 + 4, _fmt(xmax), (80, 80, 80))


def plot_curves(path, step_rows: Iterable[Dict], epoch_rows: Iterable[Dict], width: int = 720,
                height: int = 480) -> None:
    """Loss panel (log scale) over global_step: per-step train loss, per-epoch mean train loss and
    val loss; lr panel over global_step."""
    step_rows, epoch_rows = list(step_rows), list(epoch_rows)
    img = np.full((height, width, 3), 255, np.uint8)

    def col(rows, key):
        rs = [r for r in rows if r.get(key) is not None]
        return [r["global_step"] for r in rs], [r[key] for r in rs]

    split = int(height * 0.68)
    loss = [("train", *col(step_rows, "train_loss"), (120, 160, 230)),
            ("train epoch", *col(epoch_rows, "train_loss"), (0, 0, 160)),
            ("val", *col(epoch_rows, "val_loss"), (220, 0, 0))]
    _panel(img, (50, 24, width - 12, split - 10), "LOSS: TRAIN (BLUE) VAL (RED) / STEP", loss, log_y=True)
    _panel(img, (50, split + 18, width - 12, height - 22), "LR",
           [("lr", *col(step_rows, "lr"), (0, 150, 0))], log_y=False)
    write_png(path, img)
