"""Write small robomimic-layout hdf5 files for the data tests (and the data benchmark)."""
from __future__ import annotations

import copy
import json
from typing import Any, Dict, List, Optional, Sequence

import h5py
import numpy as np

# non-square images catch H/W mix-ups; one key of each low-dim normalizer kind
SMALL_META: Dict[str, Any] = {
    "obs": {
        "agentview_image": {"shape": [3, 8, 6], "type": "rgb"},
        "robot0_eef_pos": {"shape": [3]},
        "robot0_eef_quat": {"shape": [4]},
        "robot0_gripper_qpos": {"shape": [2]},
    },
    "action": {"shape": [7]},
}

ENV_ARGS = {"env_name": "NutAssemblySquare", "type": 1,
            "env_kwargs": {"controller_configs": {"type": "OSC_POSE", "control_delta": True}}}

Demo = Dict[str, Any]  # {'actions': (n, Da) float, 'obs': {key: (n, ...) array}}


def make_demos(lengths: Sequence[int], shape_meta: Dict[str, Any] = SMALL_META, seed: int = 0) -> List[Demo]:
    """Random demos: actions / low-dim float64 (as robomimic writes them), images uint8 (n, H, W, C)."""
    rng = np.random.default_rng(seed)
    demos = []
    for n in lengths:
        obs = {}
        for key, meta in shape_meta["obs"].items():
            shape = list(meta["shape"])
            if meta.get("type", "low_dim") == "rgb":
                c, h, w = shape
                obs[key] = rng.integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
            else:
                obs[key] = rng.standard_normal((n, *shape))
        demos.append({"actions": rng.uniform(-1, 1, size=(n, *shape_meta["action"]["shape"])), "obs": obs})
    return demos


def write_robomimic(path, demos: Sequence[Demo], names: Optional[Sequence[str]] = None,
                    env_args: Optional[dict] = ENV_ARGS, masks: Optional[Dict[str, List[str]]] = None):
    """Write demos as data/<name>/{actions, obs/<key>, rewards, dones, states}; names default demo_<i>."""
    names = list(names) if names is not None else [f"demo_{i}" for i in range(len(demos))]
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for name, demo in zip(names, demos):
            g = data.create_group(name)
            n = len(demo["actions"])
            g.create_dataset("actions", data=demo["actions"])
            g.create_dataset("rewards", data=np.zeros(n))
            g.create_dataset("dones", data=np.zeros(n, dtype=np.int64))
            g.create_dataset("states", data=np.zeros((n, 5)))
            g.attrs["num_samples"] = n
            g.attrs["model_file"] = "<mujoco/>"
            obs = g.create_group("obs")
            for key, arr in demo["obs"].items():
                obs.create_dataset(key, data=arr)
            total += n
        data.attrs["total"] = total
        if env_args is not None:
            data.attrs["env_args"] = json.dumps(env_args)
        if masks:
            m = f.create_group("mask")
            for split, members in masks.items():
                m.create_dataset(split, data=np.array([s.encode() for s in members], dtype="S"))
    return path


def write_small(path, lengths: Sequence[int], shape_meta: Dict[str, Any] = SMALL_META, seed: int = 0, **kw):
    """make_demos + write_robomimic; returns the demos written."""
    demos = make_demos(lengths, shape_meta, seed)
    write_robomimic(path, demos, **kw)
    return demos


def concat_hwc(demos: Sequence[Demo], key: str) -> np.ndarray:
    """The original's replay-buffer array for `key` ('action' or an obs key): float32 low-dim, uint8 HWC images."""
    arrs = [d["actions"] if key == "action" else d["obs"][key] for d in demos]
    out = np.concatenate(arrs, axis=0)
    return out if out.dtype == np.uint8 else out.astype(np.float32)


def meta_copy(shape_meta: Dict[str, Any] = SMALL_META) -> Dict[str, Any]:
    return copy.deepcopy(shape_meta)
