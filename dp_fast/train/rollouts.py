"""Rollouts during training: whether they can run (the simulator installed, the dataset's env_args), and
one epoch's evaluation turned into numbers for the epoch's log row."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from ..sim.runner import run_rollouts


def find_runner(rollout_every: int, env_args: Optional[dict]) -> Tuple[Optional[Callable], Optional[str]]:
    """(run_rollouts, None) when rollouts can run, else (None, the reason they are skipped)."""
    if rollout_every <= 0:
        return None, "training.rollout_every=0"
    # the simulator is the optional `sim` extra (importing dp_fast.sim.runner does not import it)
    missing = [m for m in ("robosuite", "mujoco") if importlib.util.find_spec(m) is None]
    if missing:
        return None, f"{' and '.join(missing)} not installed (pip install -e '.[sim]')"
    if env_args is None:
        return None, ("the dataset has no simulator env_args (robomimic data.attrs['env_args'], or the "
                      "meta/robomimic.json of a `dp-fast convert` copy)")
    return run_rollouts, None


def rollout_row(run: Callable, policy, cfg, out: Path, epoch: int, progress: bool,
                say: Callable[[str], None]) -> Dict[str, Any]:
    """Roll `policy` out as cfg.task.env_runner says; the scalar metrics ('/' -> '_') and the videos'
    paths relative to `out`. A failed rollout is reported in the row, not raised: it must not end hours
    of training."""
    r = cfg.task.env_runner
    kw = {"n_envs": r.n_envs} if r.n_envs is not None else {}
    try:
        metrics = run(policy, task=None, dataset=cfg.task.dataset_path, n_train=r.n_train, n_test=r.n_test,
                      max_steps=r.max_steps, n_videos=r.n_videos,
                      video_dir=str(out / "media" / f"epoch_{epoch:04d}"), seed=r.test_start_seed,
                      progress=progress, **kw)
    except ImportError as e:  # robosuite / mujoco missing
        return {"rollout_skipped": f"{type(e).__name__}: {e}"}
    except Exception as e:
        say(f"rollout failed at epoch {epoch}: {type(e).__name__}: {e}")
        last = (str(e).strip().splitlines() or [""])[-1]
        return {"rollout_error": f"{type(e).__name__}: {last}"[:500]}
    row: Dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float, bool)) or (torch.is_tensor(v) and v.numel() == 1):
            row[k.replace("/", "_")] = float(v)
    videos = [str(Path(p).resolve().relative_to(out.resolve())) for p in metrics.get("video_paths", [])]
    if videos:
        row["video_paths"] = videos
    return row
