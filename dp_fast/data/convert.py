"""`dp-fast convert SRC.hdf5 DST_DIR`: a LeRobotDataset v3.0 copy of a robomimic hdf5 file.

    dp-fast convert data/lift/demos.hdf5 data/lift_lerobot                 # AV1 videos (lerobot's default)
    dp-fast convert demos.hdf5 out_dir --images image                      # lossless PNG frames in parquet
    dp-fast train --dataset data/lift_lerobot --out out/lift_lerobot --preset cpu

Feature names are the file's own keys (`agentview_image`, `robot0_eef_pos`, ..., and `action`), which
are the simulator's observation keys: a policy trained on the copy has the same keys as one trained
on the hdf5 file, and `dp-fast eval` runs it as it is. Demos become episodes 0, 1, ... in the file's
numeric demo order. `meta/robomimic.json` keeps the file's env_args and each demo's first simulator
state (and model XML), so that rollouts can start from the demos (`--train-episodes`). Images are
lossy in video mode (the codec's error, as any LeRobot video dataset), exact with `--images image`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import h5py
import numpy as np

from .buffer import ACTION_KEY, DatasetError
from .lerobot import SIM_FILE
from .lerobot_meta import BOOKKEEPING
from .lerobot_write import LeRobotWriter
from .robomimic import _open, demo_names_in


def _usable_keys(demo) -> Dict[str, Dict[str, Any]]:
    """{obs key: writer feature spec} of a demo's images ((N, H, W, C) uint8) and 1-d numeric arrays."""
    out = {}
    for key, ds in (demo["obs"].items() if "obs" in demo else []):
        if not isinstance(ds, h5py.Dataset):
            continue
        if ds.dtype == np.uint8 and ds.ndim == 4:
            out[key] = {"dtype": "image", "shape": list(ds.shape[1:])}
        elif ds.ndim == 2 and np.issubdtype(ds.dtype, np.number):
            out[key] = {"dtype": "float32", "shape": [int(ds.shape[1])]}
    return out


def convert_robomimic(src, dst, obs_keys: Optional[Sequence[str]] = None, images: str = "video",
                      vcodec: str = "libsvtav1", crf: int = 30, episodes_per_file: Optional[int] = None,
                      task: Optional[str] = None, overwrite: bool = False) -> Path:
    """Write the LeRobot copy of robomimic file `src` to folder `dst`; returns dst.
    obs_keys: the observation keys to copy (default: every image and 1-d numeric key)."""
    src = Path(src)
    with _open(str(src)) as f:
        names = demo_names_in(f, src)
        grp = f["data"]
        usable = _usable_keys(grp[names[0]])
        keys = list(usable) if obs_keys is None else list(obs_keys)
        absent = [k for k in keys if k not in usable]
        if absent:
            raise DatasetError(f"{src}: {names[0]}: obs keys {absent} not found (or not images / 1-d arrays); "
                               f"usable: {sorted(usable)}")
        raw = grp.attrs.get("env_args")
        env_args = json.loads(raw.decode() if isinstance(raw, bytes) else raw) if raw is not None else None
        kw = (env_args or {}).get("env_kwargs", {})
        robots = kw.get("robots")
        robot = (robots[0] if isinstance(robots, list) and robots else robots) or None
        features = {k: usable[k] for k in keys}
        features[ACTION_KEY] = {"dtype": "float32", "shape": [int(grp[names[0]]["actions"].shape[1])]}
        writer = LeRobotWriter(dst, fps=int(kw.get("control_freq", 20)), features=features,
                               robot_type=str(robot).lower() if robot else None, images=images, vcodec=vcodec,
                               crf=crf, episodes_per_file=episodes_per_file, overwrite=overwrite)
        text = task or (env_args or {}).get("env_name") or src.stem
        starts: List[Dict[str, Any]] = []
        for name in names:
            demo = grp[name]
            frames = {k: demo["obs"][k][()] for k in keys}
            frames[ACTION_KEY] = demo["actions"][()]
            writer.add_episode(frames, text)
            if "states" in demo:
                starts.append({"demo": name, "states": np.asarray(demo["states"][0], dtype=np.float64).tolist(),
                               "model": demo.attrs.get("model_file")})
    root = writer.finish()
    if env_args is not None:
        sim = {"source": str(src), "env_args": env_args, "episodes": starts if len(starts) == len(names) else []}
        (root / SIM_FILE).write_text(json.dumps(sim))
    return root


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="robomimic-format hdf5 file")
    p.add_argument("dst", help="output folder (the LeRobot dataset root)")
    p.add_argument("--obs-keys", nargs="+", default=None, help="observation keys to copy (default: all)")
    p.add_argument("--images", choices=("video", "image"), default="video",
                   help="video: mp4 files per camera (lossy); image: PNG bytes in the parquet files (exact)")
    p.add_argument("--vcodec", default="libsvtav1", help="PyAV encoder for --images video (libsvtav1, libx264)")
    p.add_argument("--crf", type=int, default=30, help="video quality (lower is better; 30 as lerobot)")
    p.add_argument("--episodes-per-file", type=int, default=None,
                   help="start a new data / video file every N episodes (default: one file)")
    p.add_argument("--task", default=None, help="the task text of every episode (default: the env name)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")


def run(args) -> int:
    try:
        root = convert_robomimic(args.src, args.dst, obs_keys=args.obs_keys, images=args.images, vcodec=args.vcodec,
                                 crf=args.crf, episodes_per_file=args.episodes_per_file, task=args.task,
                                 overwrite=args.overwrite)
    except (DatasetError, ValueError) as e:
        print(f"dp-fast convert: {e}", file=sys.stderr)
        return 2
    info = json.loads((root / "meta" / "info.json").read_text())
    feats = [k for k in info["features"] if k not in BOOKKEEPING]
    print(f"wrote {root}: {info['total_episodes']} episodes, {info['total_frames']} frames, features {feats}")
    return 0
