"""Helpers every dataset reader shares: the image-size option, resizing frames once at load, and the
check that a dataset's frames fit in memory before any of them is decoded.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from .buffer import ACTION_KEY, DatasetError, parse_shape_meta

ImageSize = Union[int, Sequence[int]]


def parse_image_size(size: Optional[ImageSize]) -> Optional[Tuple[int, int]]:
    """None, N (square) or [H, W] -> None or (H, W); ValueError for anything else."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"image size must be N or [H, W], got {size!r}")
    if isinstance(size, int):
        size = (size, size)
    if not isinstance(size, (list, tuple)) or len(size) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        raise ValueError(f"image size must be N or [H, W] (positive ints), got {size!r}")
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {[h, w]}")
    return h, w


def with_image_size(shape_meta: Mapping[str, Any], size: Optional[ImageSize]) -> Dict[str, Any]:
    """A copy of shape_meta whose rgb entries are [C, H, W] at `size` (unchanged when size is None)."""
    out = copy.deepcopy(dict(shape_meta))
    hw = parse_image_size(size)
    if hw is None:
        return out
    for meta in out["obs"].values():
        if meta.get("type", "low_dim") == "rgb":
            meta["shape"] = [int(meta["shape"][0]), hw[0], hw[1]]
    return out


def resize_frames(frames: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, h, w) uint8: bilinear with antialiasing (area-like when shrinking),
    rounded; the frames themselves when they already have that size."""
    if tuple(frames.shape[-2:]) == tuple(hw):
        return frames
    x = F.interpolate(frames.float(), size=tuple(hw), mode="bilinear", align_corners=False,
                      antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8)


def buffer_nbytes(shape_meta: Mapping[str, Any], n_frames: int) -> int:
    """Bytes of a replay buffer for shape_meta: uint8 images, float32 low-dim keys and actions."""
    rgb, low, da = parse_shape_meta(shape_meta)
    per_frame = sum(c * h * w for c, h, w in rgb.values())
    per_frame += 4 * (da + sum(int(torch.Size(s).numel()) for s in low.values()))
    return int(n_frames) * per_frame


def available_memory_bytes() -> Optional[int]:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_fits_in_memory(shape_meta: Mapping[str, Any], n_frames: int, where: str) -> int:
    """Raise DatasetError when the buffer for `n_frames` frames exceeds the available memory; returns
    the bytes it needs."""
    need = buffer_nbytes(shape_meta, n_frames)
    have = available_memory_bytes()
    if have is not None and need > have:
        rgb, _, _ = parse_shape_meta(shape_meta)
        sizes = ", ".join(f"{k} {list(s)}" for k, s in rgb.items()) or "no images"
        raise DatasetError(
            f"{where}: the frames do not fit in memory: {n_frames} frames ({sizes}, plus low-dim keys and "
            f"'{ACTION_KEY}') need {_size(need)} in the uint8 replay buffer, {_size(have)} is available. "
            f"Use fewer cameras (task.obs_keys), smaller images (--image-size / task.image_size), or a "
            f"machine with more memory.")
    return need
