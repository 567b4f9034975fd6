"""What a rollout run consists of, decided before any worker starts.

`plan_rollouts` turns run_rollouts' arguments into a `RolloutPlan`: the episode list (train episodes from
a dataset's demo start states, then test episodes from seeds, each with its video path if recorded), the
env_args matching the policy's observations (its cameras at its image size, plus the video camera) and
the episode step limit. Everything that can be wrong with the arguments or the policy's observation keys
fails here, with a message, rather than in a worker.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..data.formats import sim_start_states
from .env import ROBOT_KEYS, camera_size, make_env_args
from .tasks import rollout_max_steps

VIDEO_CAMERA = "agentview"
# video frames are rendered at least this size: a policy may see 48 px images, a person wants more
VIDEO_MIN_SIZE = 128


@dataclass
class RolloutPlan:
    obs_meta: Dict[str, Any]       # the policy's shape_meta["obs"]
    env_args: Dict[str, Any]       # what every worker builds its env from
    episodes: List[Dict[str, Any]]  # {"index", "split", "demo" + "state" | "seed", "video"?, "trace"?}, in run order
    max_steps: int

    def worker_config(self, n_obs_steps: int, stop_on_success: bool) -> Dict[str, Any]:
        """The config every `workers.EnvWorker` is built from."""
        return {"env_args": self.env_args, "obs_keys": list(self.obs_meta), "n_obs_steps": int(n_obs_steps),
                "max_steps": self.max_steps, "stop_on_success": bool(stop_on_success),
                "video_camera": VIDEO_CAMERA,
                "policy_cameras": [k[: -len("_image")] for k, m in self.obs_meta.items() if m.get("type") == "rgb"]}


def plan_rollouts(policy, *, task: Optional[str], dataset, n_train: int, n_test: int, seed: int,
                  train_start_idx: int, cameras: Optional[Sequence[str]], video_dir, n_videos: int,
                  max_steps: Optional[int], trace_dir=None) -> RolloutPlan:
    """Episodes, env_args and step limit of a run (see run_rollouts for the arguments)."""
    if n_train > 0 and dataset is None:
        raise ValueError("train episodes (n_train > 0) need a dataset for their initial states")
    meta = policy_obs_meta(policy)
    ds_env_args, episodes = None, []
    if dataset is not None:
        ds_env_args, episodes = sim_start_states(dataset, n_train, train_start_idx)
    elif task is None:
        raise ValueError("give a task or a dataset")
    episodes += [{"split": "test", "seed": int(seed) + i} for i in range(n_test)]
    if not episodes:
        raise ValueError("no episodes: n_train and n_test are both 0")
    env_args = env_args_for(meta, task, ds_env_args, cameras, video_dir is not None and n_videos > 0)
    limit = rollout_max_steps(env_args["env_name"]) if max_steps is None else int(max_steps)
    counts = {"train": 0, "test": 0}
    for i, ep in enumerate(episodes):
        k = counts[ep["split"]]
        counts[ep["split"]] += 1
        tag = f"demo{ep['demo']}" if ep["split"] == "train" else f"seed{ep['seed']}"
        if video_dir is not None and k < n_videos:
            ep["video"] = str(Path(video_dir) / f"{ep['split']}_{k:03d}_{tag}.mp4")
        if trace_dir is not None:
            ep["trace"] = str(Path(trace_dir) / f"{ep['split']}_{k:03d}_{tag}.jsonl")
        ep["index"] = i
    check_obs_keys(meta, env_args)
    return RolloutPlan(obs_meta=meta, env_args=env_args, episodes=episodes, max_steps=limit)


def policy_obs_meta(policy) -> Dict[str, Any]:
    """The policy's observation entries: config.shape_meta["obs"] (or shape_meta["obs"])."""
    cfg = getattr(policy, "config", None)
    meta = getattr(cfg, "shape_meta", None) or getattr(policy, "shape_meta", None)
    if meta is None or "obs" not in meta:
        raise ValueError("policy needs config.shape_meta (or shape_meta) with an 'obs' entry")
    return dict(meta["obs"])


def env_args_for(policy_meta: Mapping[str, Any], task: Optional[str], dataset_env_args, cameras, video: bool):
    """env_args with the policy's cameras at the policy's image size, plus the video camera (when it is
    not a policy camera) at max(policy size, VIDEO_MIN_SIZE)."""
    rgb = {k: m for k, m in policy_meta.items() if m.get("type", "low_dim") == "rgb"}
    sizes = {tuple(m["shape"][1:]) for m in rgb.values()}
    if len(sizes) > 1 or any(h != w for h, w in sizes):
        raise ValueError(f"all policy cameras must be square and of one size, got {sizes}")
    size = next(iter(sizes))[0] if sizes else 84
    cams = list(cameras) if cameras is not None else [k[: -len("_image")] for k in rgb]
    if dataset_env_args is None:
        args = make_env_args(task, image_size=size, cameras=cams, render=bool(cams) or video)
    else:
        args = dict(dataset_env_args)
        kw = dict(args["env_kwargs"])
        file_size = camera_size(kw) if "camera_heights" in kw else size
        if sizes and file_size != size:
            raise ValueError(f"the dataset's cameras are {file_size} px, the policy wants {size} px")
        # only the cameras needed are rendered (an image does not depend on which other cameras exist)
        kw.update(camera_names=cams, camera_heights=size, camera_widths=size)
        args["env_kwargs"] = kw
    if video and VIDEO_CAMERA not in cams:
        kw = dict(args["env_kwargs"])
        vsize = max(size, VIDEO_MIN_SIZE)
        kw.update(camera_names=cams + [VIDEO_CAMERA], camera_heights=[size] * len(cams) + [vsize],
                  camera_widths=[size] * len(cams) + [vsize], use_camera_obs=True, has_offscreen_renderer=True)
        args["env_kwargs"] = kw
    return args


def check_obs_keys(meta: Mapping[str, Any], env_args: Mapping[str, Any]) -> None:
    """Every observation key of the policy must be one the env produces."""
    cams = env_args["env_kwargs"].get("camera_names") or []
    cams = [cams] if isinstance(cams, str) else list(cams)
    for key, m in meta.items():
        if m.get("type", "low_dim") == "rgb":
            ok = key.endswith("_image") and key[: -len("_image")] in cams
        else:
            ok = key in ROBOT_KEYS or key == "object"
        if not ok:
            raise ValueError(f"the policy's observation key '{key}' is not produced by the env (cameras {cams}, "
                             f"low-dim keys {list(ROBOT_KEYS) + ['object']})")
