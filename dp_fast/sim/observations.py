"""Observation layouts: robosuite's raw observations -> robomimic's dataset layout -> the policy's.

robomimic layout (what `SimEnv` returns and the demo files store):
- `agentview_image`, `robot0_eye_in_hand_image`: (H, W, 3) uint8, rows top-to-bottom (robosuite renders
  OpenGL-style, bottom row first; robomimic stores them flipped, and so do we);
- `robot0_eef_pos` (3), `robot0_eef_quat` (4, xyzw, queried from the hand body as robomimic datasets
  were), `robot0_gripper_qpos` (2), a few more `robot0_*` proprioception keys (ROBOT_KEYS) and `object`
  (the task's object-state vector), all float64.

Policy layout (`obs_to_policy`): images (3, H, W) uint8, low-dim float32.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

# Proprioception keys kept from robosuite's observation (robomimic dataset names).
ROBOT_KEYS = (
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
    "robot0_gripper_qvel",
    "robot0_joint_pos",
    "robot0_joint_pos_cos",
    "robot0_joint_pos_sin",
    "robot0_joint_vel",
)
# The seed policy's observation keys, in feature order.
POLICY_OBS_KEYS = (
    "agentview_image",
    "robot0_eye_in_hand_image",
    "robot0_eef_pos",
    "robot0_eef_quat",
    "robot0_gripper_qpos",
)


def robomimic_obs(raw: Mapping[str, Any], cameras: Sequence[str], flip: bool) -> Dict[str, np.ndarray]:
    """robosuite observation dict -> robomimic's names and layout: the images of `cameras` (rows
    reversed with flip, i.e. when robosuite renders bottom row first), ROBOT_KEYS, and `object` from
    robosuite's `object-state`."""
    obs: Dict[str, np.ndarray] = {}
    for cam in cameras:
        img = raw[f"{cam}_image"]
        obs[f"{cam}_image"] = np.ascontiguousarray(img[::-1] if flip else img)
    for k in ROBOT_KEYS:
        if k in raw:
            obs[k] = np.array(raw[k], dtype=np.float64)
    if "object-state" in raw:
        obs["object"] = np.array(raw["object-state"], dtype=np.float64)
    return obs


def obs_to_policy(obs: Mapping[str, np.ndarray], keys: Optional[Iterable[str]] = POLICY_OBS_KEYS,
                  image_dtype: str = "uint8") -> Dict[str, np.ndarray]:
    """robomimic-layout obs dict -> the policy's layout: images (3, H, W) (uint8, or float32 in [0, 1]
    with image_dtype="float32"), low-dim float32. Works on a single obs or a stacked (T, ...) one.
    `keys=None` converts every key."""
    out = {}
    for k in (obs.keys() if keys is None else keys):
        x = np.asarray(obs[k])
        if k.endswith("_image"):
            x = np.moveaxis(x, -1, -3)
            x = np.ascontiguousarray(x)
            if image_dtype != "uint8":
                x = x.astype(np.float32) / 255.0
        else:
            x = x.astype(np.float32)
        out[k] = x
    return out
