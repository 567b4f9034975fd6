"""The in-memory replay buffer every dataset format loads into, and the shape_meta it is read by.

One contiguous tensor per key over all episodes (episode after episode) plus `episode_ends`, like the
original's zarr ReplayBuffer, except that images stay uint8 in CHW (the policy's layout) and nothing is
compressed. robomimic.py and lerobot.py fill it; dataset.py samples windows from it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

ACTION_KEY = "action"


class DatasetError(ValueError):
    """A dataset file that does not match what the policy's shape_meta asks for."""


Shapes = Dict[str, Tuple[int, ...]]


def parse_shape_meta(shape_meta: Mapping[str, Any]) -> Tuple[Shapes, Shapes, int]:
    """Split shape_meta into (rgb {key: (C, H, W)}, low_dim {key: shape}, action_dim), in dict order."""
    if "obs" not in shape_meta or "action" not in shape_meta:
        raise DatasetError(f"shape_meta needs 'obs' and 'action' entries, got keys {list(shape_meta)}")
    rgb, low = {}, {}
    for key, meta in shape_meta["obs"].items():
        kind = meta.get("type", "low_dim")
        shape = tuple(int(s) for s in meta["shape"])
        if kind == "rgb":
            if len(shape) != 3:
                raise DatasetError(f"shape_meta obs '{key}': rgb shape must be [C, H, W], got {list(shape)}")
            rgb[key] = shape
        elif kind == "low_dim":
            low[key] = shape
        else:
            raise DatasetError(f"shape_meta obs '{key}': type must be 'rgb' or 'low_dim', got {kind!r}")
    act = tuple(int(s) for s in shape_meta["action"]["shape"])
    if len(act) != 1:
        raise DatasetError(f"shape_meta['action']['shape'] must be 1-d, got {list(act)}")
    if ACTION_KEY in rgb or ACTION_KEY in low:
        raise DatasetError(f"shape_meta obs may not use the reserved key '{ACTION_KEY}'")
    return rgb, low, act[0]


class ReplayBuffer:
    """Episodes concatenated per key.

    data['action']: (N, Da) float32; data[low_dim key]: (N, *shape) float32; data[rgb key]: (N, C, H, W) uint8.
    episode_ends: (E,) int64 numpy, exclusive ends; episode e is rows episode_ends[e-1]:episode_ends[e].
    frame_info: per-row numpy arrays that are not sampled (a LeRobot dataset's episode_index,
    frame_index and timestamp); empty for robomimic files.
    """

    def __init__(self, data: Dict[str, torch.Tensor], episode_ends: np.ndarray, demo_names: List[str],
                 env_args: Optional[dict] = None, masks: Optional[Dict[str, List[str]]] = None,
                 path: Optional[str] = None, frame_info: Optional[Dict[str, np.ndarray]] = None):
        self.data = data
        self.episode_ends = np.asarray(episode_ends, dtype=np.int64)
        self.demo_names = list(demo_names)
        self.env_args = env_args
        self.masks = masks or {}
        self.path = path
        self.frame_info = frame_info or {}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.data[key]

    def keys(self):
        return self.data.keys()

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(self.episode_ends, prepend=0)

    @property
    def device(self) -> torch.device:
        return next(iter(self.data.values())).device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.data.values())

    def to(self, device) -> "ReplayBuffer":
        """Move every array to `device` (once, e.g. GPU residency); returns self."""
        device = torch.device(device)
        for k in list(self.data):
            self.data[k] = self.data[k].to(device)
        return self
