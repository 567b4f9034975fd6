"""The one place where the dataset format is told apart: a robomimic hdf5 file or a LeRobotDataset
v3.0 folder (detected by `meta/info.json`). Training, evaluation and the tools call these functions and
never branch on the format themselves; both formats end in the same ReplayBuffer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .buffer import DatasetError, ReplayBuffer
from .lerobot import lerobot_start_states, load_lerobot
from .lerobot_meta import LeRobotMeta, is_lerobot_root
from .robomimic import load_robomimic_hdf5, read_start_states, robomimic_shape_meta

FORMATS = ("robomimic", "lerobot")


def dataset_format(path) -> str:
    """'lerobot' for a folder with meta/info.json, 'robomimic' for a file; DatasetError otherwise."""
    p = Path(path)
    if is_lerobot_root(p):
        return "lerobot"
    if p.is_file():
        return "robomimic"
    if p.is_dir():
        raise DatasetError(f"{p}: a folder without meta/info.json: not a LeRobot dataset root (for a hub "
                           f"snapshot, pass the folder that holds meta/, data/ and videos/)")
    raise DatasetError(f"{p}: no such file or folder")


def dataset_shape_meta(path, obs_keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """shape_meta of a dataset: its images as rgb [C, H, W], 1-d numeric arrays as low_dim, its actions.
    obs_keys: the keys to use, in order (default: the seed's keys it has, else every usable one)."""
    if dataset_format(path) == "lerobot":
        return LeRobotMeta(path).shape_meta(obs_keys)
    return robomimic_shape_meta(path, list(obs_keys) if obs_keys is not None else None)


def load_dataset(path, shape_meta: Mapping[str, Any], device="cpu", resize: bool = False) -> ReplayBuffer:
    """Every episode of the dataset into a ReplayBuffer (uint8 CHW images, float32 low-dim and actions);
    resize: images are resized once, at load, to shape_meta's size."""
    if dataset_format(path) == "lerobot":
        return load_lerobot(path, shape_meta, device=device, resize=resize)
    return load_robomimic_hdf5(path, shape_meta, device=device, resize=resize)


def sim_start_states(path, n: int, start: int) -> Tuple[dict, List[Dict[str, Any]]]:
    """(env_args, n rollout episodes from the first simulator states of episodes start, start + 1, ...):
    a robomimic file's demos, or a LeRobot copy written by `dp-fast convert` (meta/robomimic.json)."""
    if dataset_format(path) == "robomimic":
        return read_start_states(path, n, start)
    return lerobot_start_states(path, n, start)
