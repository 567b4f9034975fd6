"""Read a robomimic-format hdf5 file into an in-memory replay buffer.

File layout (robomimic): `data/demo_<i>/actions (N, Da)`, `data/demo_<i>/obs/<key> (N, ...)`, images
`(N, H, W, C) uint8` stored top-to-bottom; optional `mask/<split>` (arrays of demo names) and
`data.attrs['env_args']` (JSON).

The buffer holds, per key, one contiguous tensor over all episodes (episode after episode) plus
`episode_ends` (exclusive end of each episode), like the original's zarr ReplayBuffer, but:
  * images are kept uint8 and stored CHW, (N, C, H, W), so a gather yields the policy's layout directly
    (the original stores HWC and moves the axis and divides by 255 per sample);
  * low-dim obs and actions are float32 (the original casts them the same way);
  * no Jpeg2k compression: the raw arrays live in RAM (or on a GPU after `to(device)`).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import h5py
import numpy as np
import torch

ACTION_KEY = "action"
_DEMO_RE = re.compile(r"^demo_(\d+)$")


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


def sorted_demo_names(names) -> List[str]:
    """`demo_<int>` names in numeric order (demo_2 before demo_10); other entries are ignored.

    The original reads `demos[f'demo_{i}'] for i in range(len(data))`: numeric order too, but it needs
    exactly demo_0..demo_{n-1} and nothing else under `data`. Here gaps are allowed.
    """
    found = {}
    for name in names:
        m = _DEMO_RE.match(name)
        if m is None:
            continue
        i = int(m.group(1))
        if i in found:
            raise DatasetError(f"demos '{found[i]}' and '{name}' have the same index {i}")
        found[i] = name
    return [found[i] for i in sorted(found)]


class ReplayBuffer:
    """Episodes concatenated per key.

    data['action']: (N, Da) float32; data[low_dim key]: (N, *shape) float32; data[rgb key]: (N, C, H, W) uint8.
    episode_ends: (E,) int64 numpy, exclusive ends; episode e is rows episode_ends[e-1]:episode_ends[e].
    """

    def __init__(self, data: Dict[str, torch.Tensor], episode_ends: np.ndarray, demo_names: List[str],
                 env_args: Optional[dict] = None, masks: Optional[Dict[str, List[str]]] = None,
                 path: Optional[str] = None):
        self.data = data
        self.episode_ends = np.asarray(episode_ends, dtype=np.int64)
        self.demo_names = list(demo_names)
        self.env_args = env_args
        self.masks = masks or {}
        self.path = path

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


def _open(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from None


def _check_dataset(path, demo, key, ds, n, frame_shape, kind) -> None:
    where = f"{path}: {demo}/{'actions' if key == ACTION_KEY else 'obs/' + key}"
    if not isinstance(ds, h5py.Dataset):
        raise DatasetError(f"{where}: expected an array, found a {type(ds).__name__}")
    if tuple(ds.shape[1:]) != tuple(frame_shape):
        h, w, c = frame_shape if kind == "rgb" else (0, 0, 0)
        layout = f" (shape_meta [C, H, W] = {[c, h, w]}, stored H, W, C in the file)" if kind == "rgb" else ""
        raise DatasetError(f"{where}: expected shape (N,) + {tuple(frame_shape)}{layout}, found {tuple(ds.shape)}")
    if n is not None and ds.shape[0] != n:
        raise DatasetError(f"{where}: length mismatch: expected {n} frames (the length of actions), "
                           f"found {ds.shape[0]}")
    dt = ds.dtype
    if kind == "rgb":
        if dt != np.uint8:
            raise DatasetError(f"{where}: expected dtype uint8 for an rgb key, found {dt}")
    elif not (np.issubdtype(dt, np.floating) or np.issubdtype(dt, np.integer)):
        raise DatasetError(f"{where}: expected a numeric (float or int) dtype, found {dt}")


def load_robomimic_hdf5(path, shape_meta: Mapping[str, Any], demo_names: Optional[List[str]] = None,
                        device="cpu") -> ReplayBuffer:
    """Read the keys named in shape_meta (+ 'actions') of every demo into a ReplayBuffer.

    Everything is checked before any array is read: at least one demo, no empty demo, every key
    present with the per-frame shape and dtype of shape_meta and the demo's length. Errors are
    DatasetError naming the file, demo and key, what was expected and what was found.
    demo_names: read only these demos, in this order (default: all demo_<int>, numeric order).
    """
    path = os.fspath(path)
    rgb, low, da = parse_shape_meta(shape_meta)
    # (key, hdf5 name, per-frame shape in the file, kind)
    specs = [(ACTION_KEY, "actions", (da,), "low_dim")]
    specs += [(k, "obs/" + k, s, "low_dim") for k, s in low.items()]
    specs += [(k, "obs/" + k, (s[1], s[2], s[0]), "rgb") for k, s in rgb.items()]

    with _open(path) as f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise DatasetError(f"{path}: no 'data' group (robomimic layout is data/demo_<i>/...); "
                               f"top-level entries: {list(f.keys())}")
        grp = f["data"]
        names = sorted_demo_names(grp.keys()) if demo_names is None else list(demo_names)
        if not names:
            raise DatasetError(f"{path}: 'data' holds no demo_<i> groups; entries: {list(grp.keys())[:10]}")
        lengths = []
        for name in names:
            if name not in grp:
                raise DatasetError(f"{path}: no demo '{name}' in 'data'")
            demo = grp[name]
            n = None
            for key, h5name, frame_shape, kind in specs:
                if h5name not in demo:
                    what = "actions" if key == ACTION_KEY else f"obs key '{key}'"
                    have = list(demo["obs"].keys()) if key != ACTION_KEY and "obs" in demo else list(demo.keys())
                    raise DatasetError(f"{path}: {name}: missing {what} (expected {h5name} of per-frame shape "
                                       f"{tuple(frame_shape)}); found {have}")
                _check_dataset(path, name, key, demo[h5name], n, frame_shape, kind)
                if n is None:
                    n = demo[h5name].shape[0]
                    if n == 0:
                        raise DatasetError(f"{path}: {name}: empty demo (0 actions)")
            lengths.append(n)
        ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
        starts = ends - np.asarray(lengths, dtype=np.int64)
        total = int(ends[-1])

        data: Dict[str, torch.Tensor] = {}
        for key, h5name, frame_shape, kind in specs:
            if kind == "rgb":
                h, w, c = frame_shape
                out = torch.empty((total, c, h, w), dtype=torch.uint8)
                for name, s, e in zip(names, starts, ends):
                    arr = torch.from_numpy(grp[name][h5name][()])  # (n, H, W, C)
                    out[s:e].copy_(arr.permute(0, 3, 1, 2))
            else:
                out = torch.empty((total,) + tuple(frame_shape), dtype=torch.float32)
                for name, s, e in zip(names, starts, ends):
                    out[s:e] = torch.from_numpy(np.asarray(grp[name][h5name][()], dtype=np.float32))
            data[key] = out

        env_args = None
        if "env_args" in grp.attrs:
            raw = grp.attrs["env_args"]
            try:
                env_args = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: data.attrs['env_args'] is not valid JSON ({e})") from None
        masks = {}
        if "mask" in f and isinstance(f["mask"], h5py.Group):
            for split, ds in f["mask"].items():
                masks[split] = [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]

    buf = ReplayBuffer(data, ends, names, env_args=env_args, masks=masks, path=path)
    if torch.device(device).type != "cpu":
        buf.to(device)
    return buf
