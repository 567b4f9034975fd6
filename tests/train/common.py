"""Tiny datasets and settings for the training tests (seconds on a 2-core CPU)."""
from __future__ import annotations

import copy
from typing import Any, Dict

import numpy as np

from tests.data.make_hdf5 import SMALL_META, make_demos, write_robomimic

TINY: Dict[str, Any] = {
    "policy.n_layer": 1, "policy.n_emb": 32, "policy.n_head": 2, "policy.vision_width": 16,
    "policy.num_inference_steps": 4, "dataloader.batch_size": 8, "val_dataloader.batch_size": 8,
    "training.device": "cpu", "training.rollout_every": 0, "training.max_val_steps": 1, "training.num_threads": 1, "training.tqdm_interval_sec": 5.0,
}


def tiny_meta() -> Dict[str, Any]:
    return copy.deepcopy(SMALL_META)


def write_tiny(path, n_episodes: int = 5, length: int = 12, seed: int = 0, smooth: bool = False):
    """SMALL_META demos (one 8x6 camera, three low-dim keys, 7-d actions). smooth: actions are slow
    sinusoids of time (a learnable target for the loss-falls test)."""
    demos = make_demos([length] * n_episodes, SMALL_META, seed)
    if smooth:
        t = np.arange(length)[:, None] / length
        for i, d in enumerate(demos):
            d["actions"] = 0.8 * np.sin(2 * np.pi * t + np.arange(7)[None, :] * 0.7 + 0.3 * i)
    write_robomimic(path, demos)
    return path


def overrides(dataset, **extra) -> Dict[str, Any]:
    out = dict(TINY)
    out["task.dataset_path"] = str(dataset)
    out.update({k.replace("__", "."): v for k, v in extra.items()})
    return out
