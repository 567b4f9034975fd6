"""Read a robomimic-format hdf5 file into the in-memory replay buffer (buffer.py).

File layout (robomimic): `data/demo_<i>/actions (N, Da)`, `data/demo_<i>/obs/<key> (N, ...)`, images
`(N, H, W, C) uint8` stored top-to-bottom; optional `mask/<split>` (arrays of demo names) and
`data.attrs['env_args']` (JSON). Images are moved to CHW once, at load (the original stores HWC and
moves the axis per sample); low-dim obs and actions become float32, as in the original.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

import h5py
import numpy as np
import torch

from ..config import SEED_SHAPE_META
from .buffer import ACTION_KEY, DatasetError, ReplayBuffer, parse_shape_meta
from .frames import check_fits_in_memory, resize_frames

_DEMO_RE = re.compile(r"^demo_(\d+)$")


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


def demo_names_in(f: h5py.File, path) -> List[str]:
    """The open file's demo_<i> names in numeric order; DatasetError without a 'data' group or a demo."""
    if "data" not in f:
        raise DatasetError(f"{path}: no 'data' group (robomimic layout is data/demo_<i>/...)")
    names = sorted_demo_names(f["data"].keys())
    if not names:
        raise DatasetError(f"{path}: 'data' holds no demo_<i> groups")
    return names


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
                        device="cpu", resize: bool = False) -> ReplayBuffer:
    """Read the keys named in shape_meta (+ 'actions') of every demo into a ReplayBuffer.

    Everything is checked before any array is read: at least one demo, no empty demo, every key
    present with the per-frame shape and dtype of shape_meta and the demo's length. Errors are
    DatasetError naming the file, demo and key, what was expected and what was found.
    demo_names: read only these demos, in this order (default: all demo_<int>, numeric order).
    resize: images of any stored H, W (with shape_meta's channels) are resized to shape_meta's.
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
                if resize and kind == "rgb" and demo[h5name].ndim == 4:
                    frame_shape = tuple(demo[h5name].shape[1:3]) + frame_shape[2:]
                _check_dataset(path, name, key, demo[h5name], n, frame_shape, kind)
                if n is None:
                    n = demo[h5name].shape[0]
                    if n == 0:
                        raise DatasetError(f"{path}: {name}: empty demo (0 actions)")
            lengths.append(n)
        ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
        starts = ends - np.asarray(lengths, dtype=np.int64)
        total = int(ends[-1])
        check_fits_in_memory(shape_meta, total, path)

        data: Dict[str, torch.Tensor] = {}
        for key, h5name, frame_shape, kind in specs:
            if kind == "rgb":
                h, w, c = frame_shape
                out = torch.empty((total, c, h, w), dtype=torch.uint8)
                for name, s, e in zip(names, starts, ends):
                    arr = torch.from_numpy(grp[name][h5name][()])  # (n, H, W, C)
                    out[s:e].copy_(resize_frames(arr.permute(0, 3, 1, 2), (h, w)))
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


def robomimic_shape_meta(path, obs_keys: Optional[List[str]] = None) -> Dict[str, Any]:
    """shape_meta from the first demo of a robomimic hdf5 file: uint8 (N, H, W, C) arrays are rgb
    [C, H, W], (N, D) numeric arrays low_dim [D]. Keys: obs_keys in that order; default the seed's
    keys present in the file (seed order), or every usable key when none of them is there."""
    with _open(str(path)) as f:
        names = demo_names_in(f, path)
        demo = f["data"][names[0]]
        if "actions" not in demo or demo["actions"].ndim != 2:
            raise DatasetError(f"{path}: {names[0]}: missing 2-d 'actions' array")
        avail = {}
        for key, ds in (demo["obs"].items() if "obs" in demo else []):
            if not isinstance(ds, h5py.Dataset):
                continue
            if ds.dtype == np.uint8 and ds.ndim == 4:
                h, w, c = ds.shape[1:]
                avail[key] = {"shape": [int(c), int(h), int(w)], "type": "rgb"}
            elif ds.ndim == 2 and np.issubdtype(ds.dtype, np.number):
                avail[key] = {"shape": [int(ds.shape[1])]}
        action_dim = int(demo["actions"].shape[1])
    if obs_keys is None:
        obs_keys = [k for k in SEED_SHAPE_META["obs"] if k in avail] or list(avail)
    missing = [k for k in obs_keys if k not in avail]
    if missing:
        raise DatasetError(f"{path}: {names[0]}: obs keys {missing} not found (or not image / 1-d arrays); "
                           f"usable keys: {sorted(avail)}")
    if not obs_keys:
        raise DatasetError(f"{path}: {names[0]}: no usable obs keys")
    return {"obs": {k: dict(avail[k]) for k in obs_keys}, "action": {"shape": [action_dim]}}


def read_start_states(path, n: int, start: int) -> Tuple[dict, List[Dict[str, Any]]]:
    """(the file's env_args, n rollout episodes starting from data/demo_{start + i}'s first stored state)."""
    with _open(str(path)) as f:
        if "data" not in f or "env_args" not in f["data"].attrs:
            raise DatasetError(f"{path}: no data.attrs['env_args'] (the simulator settings rollouts need)")
        raw = f["data"].attrs["env_args"]
        env_args = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        eps = []
        for i in range(start, start + n):
            if f"demo_{i}" not in f["data"]:
                raise DatasetError(f"{path}: no data/demo_{i} for train episode {i - start} (train_start_idx "
                                   f"{start}, n_train {n}; the file has {len(f['data'])} demos)")
            g = f["data"][f"demo_{i}"]
            state = {"states": np.asarray(g["states"][0])}
            if "model_file" in g.attrs:
                state["model"] = g.attrs["model_file"]
            eps.append({"split": "train", "demo": i, "state": state})
    return env_args, eps
