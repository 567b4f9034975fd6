"""Writing demonstrations in robomimic's hdf5 layout (the layout is described in `demos`).

    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        write_demo(data, "demo_0", demo, seed, compression="gzip")
        ...
        write_index(f, names, env_args, valid_ratio=0.1, seed=0, attrs={"task": "lift"})
"""
from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np


def write_demo(grp_data: h5py.Group, name: str, demo: Mapping[str, Any], seed: int,
               compression: Optional[str]) -> None:
    """data/<name>: actions, executed_actions (if present), states, rewards, dones, obs/, next_obs/ (if
    present); attrs num_samples, model_file, seed. uint8 images are chunked per 16 frames and compressed
    with `compression` (None: stored raw)."""
    g = grp_data.create_group(name)
    g.attrs["num_samples"] = int(len(demo["actions"]))
    g.attrs["model_file"] = demo["model_file"]
    g.attrs["seed"] = int(seed)
    g.create_dataset("actions", data=demo["actions"])
    if "executed_actions" in demo:
        g.create_dataset("executed_actions", data=demo["executed_actions"])
    g.create_dataset("states", data=demo["states"])
    g.create_dataset("rewards", data=demo["rewards"])
    g.create_dataset("dones", data=demo["dones"])
    for group_name in ("obs", "next_obs"):
        if group_name not in demo:
            continue
        og = g.create_group(group_name)
        for key, arr in demo[group_name].items():
            if arr.dtype == np.uint8 and compression:
                chunks = (min(len(arr), 16),) + arr.shape[1:]
                og.create_dataset(key, data=arr, compression=compression, chunks=chunks)
            else:
                og.create_dataset(key, data=arr)


def split_train_valid(n: int, valid_ratio: float, seed: int) -> Tuple[List[int], List[int]]:
    """Indices of the train and valid episodes: round(n * valid_ratio) held out (at least 1, at most
    n - 1; none for n < 2 or ratio 0), drawn with `seed`."""
    if n < 2 or valid_ratio <= 0:
        return list(range(n)), []
    n_val = min(max(1, int(round(n * valid_ratio))), n - 1)
    valid = sorted(np.random.default_rng(seed).choice(n, n_val, replace=False).tolist())
    vs = set(valid)
    return [i for i in range(n) if i not in vs], valid


def write_index(f: h5py.File, names: Sequence[str], env_args: Mapping[str, Any], valid_ratio: float,
                seed: int, attrs: Mapping[str, Any]) -> None:
    """mask/train and mask/valid (demo names as bytes, split by `split_train_valid`), and data's attrs:
    env_args (JSON), total (the samples of all demos), then `attrs` (provenance)."""
    train, valid = split_train_valid(len(names), valid_ratio, seed)
    mask = f.create_group("mask")
    mask.create_dataset("train", data=np.array([names[i] for i in train], dtype="S"))
    mask.create_dataset("valid", data=np.array([names[i] for i in valid], dtype="S"))
    data = f["data"]
    data.attrs["env_args"] = json.dumps(env_args)
    data.attrs["total"] = int(sum(int(data[name].attrs["num_samples"]) for name in names))
    for key, value in attrs.items():
        data.attrs[key] = value
