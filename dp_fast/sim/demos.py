"""Scripted-expert demonstrations written in robomimic's hdf5 layout.

    generate_demos("lift", 100, "lift.hdf5", workers=2)

File layout (what robomimic's dataset tools and this package's dataset reader expect):

    data                      attrs: env_args (JSON), total (sum of num_samples), and provenance
    data/demo_{i}             attrs: num_samples, model_file (the episode's MJCF xml), seed
        actions   (T, 7)  float64   delta OSC_POSE actions in [-1, 1]
        executed_actions (T, 7)     only with perturb > 0: the actions stepped (`actions` are then the
                                    expert's unperturbed labels; replaying these reproduces `states`)
        states    (T, D)  float64   flattened simulator state before each action
        rewards   (T,)    float64   sparse task reward after each action (1 on success)
        dones     (T,)    int64     1 where the task is solved after the action, and at the last step
        obs/<key> (T, ...)          observation before each action: agentview_image and
                                    robot0_eye_in_hand_image (T, H, W, 3) uint8, rows top-to-bottom;
                                    robot0_eef_pos, robot0_eef_quat, robot0_gripper_qpos, ..., object
        next_obs/<key>              only with next_obs=True
    mask/train, mask/valid        demo names (bytes); ~valid_ratio of the episodes are held out

Each attempt runs the expert with the cameras off; only successful attempts are replayed, action by
action, from the same initial simulator state with the cameras on, and recorded (`demo_record`).
Episodes end 5 steps after the first success, or fail at the task's `expert_max_steps` (400 steps
lift, can / 500 square). Attempts run in worker processes (spawn), in order of their index, so the
file's content does not depend on the number of workers. The hdf5 writing is in `demo_file`.

The file is written under a temporary name next to `out_path` and renamed at the end; on an error or
interrupt the temporary file is removed (a SIGKILL can leave a `*.partial` file, never a truncated
`out_path`).
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import h5py
import numpy as np
from tqdm import tqdm

from ..atomic_file import atomic_write
from .demo_file import write_demo, write_index
from .demo_record import SEED_STRIDE, attempt_results, episode_seed
from .env import DEFAULT_CAMERAS, make_env_args
from .tasks import TASKS

__all__ = ["generate_demos", "episode_seed", "SEED_STRIDE", "add_arguments", "run", "main"]


def generate_demos(task: str, n: int, out_path, workers: int = 1, seed: int = 0,
                   max_attempts: Optional[int] = None, progress: bool = True, *,
                   image_size: int = 84, cameras: Sequence[str] = DEFAULT_CAMERAS,
                   max_steps: Optional[int] = None, hold_steps: int = 5,
                   next_obs: bool = False, valid_ratio: float = 0.1, compression: Optional[str] = "gzip",
                   sim_settings: Optional[Mapping[str, Any]] = None, perturb: float = 0.0) -> Dict[str, Any]:
    """Write `n` successful scripted-expert episodes of `task` ('lift', 'can', 'square') to out_path.

    Attempt k uses episode seed `episode_seed(seed, k)` for both the initial state and the expert's
    style; the first n successful attempts (in order of k) are written as demo_0 .. demo_{n-1}.
    max_attempts (default 2 n + 20) bounds the attempts; if fewer than n succeed, RuntimeError and no
    file. perturb > 0 writes recovery data (see experts.run_expert): the expert's runs are pushed off
    their path while reaching the object, `actions` are the expert's own actions in the states it
    visited and `executed_actions` what was stepped (replaying those reproduces `states`).
    Returns stats: attempts, successes, success_rate (expert successes / attempts), replay failures,
    total samples, mean episode length, seconds, demos_per_min, bytes.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    task = task.lower()
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {sorted(TASKS)}")
    max_attempts = 2 * n + 20 if max_attempts is None else int(max_attempts)
    env_args = make_env_args(task, image_size=image_size, cameras=cameras, render=True,
                             sim_settings=sim_settings)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    bar = None
    if progress:
        bar = tqdm(total=n, desc=f"demos {task}", unit="demo", dynamic_ncols=True)
    t_start = time.perf_counter()
    attempts = successes = replay_failures = 0
    total = 0
    lengths: List[int] = []
    failures: List[Dict[str, Any]] = []
    t_expert = t_record = 0.0
    names: List[str] = []
    if perturb < 0:
        raise ValueError(f"perturb must be >= 0, got {perturb}")
    results = attempt_results(env_args, max_attempts, seed, workers, max_steps, hold_steps, next_obs, perturb)
    try:
        with atomic_write(out_path, suffix=".partial") as tmp_path, h5py.File(tmp_path, "w") as f:
            data = f.create_group("data")
            for res in results:
                attempts += 1
                t_expert += res["t_expert"]
                t_record += res["t_record"]
                if res["success"]:
                    successes += 1
                else:
                    failures.append({"seed": res["seed"], "phase": res["phase"], "steps": res["steps"]})
                if res["success"] and not res["replay_ok"]:
                    replay_failures += 1
                if res["demo"] is not None:
                    name = f"demo_{len(names)}"
                    write_demo(data, name, res["demo"], res["seed"], compression)
                    names.append(name)
                    total += res["steps"]
                    lengths.append(res["steps"])
                    if bar is not None:
                        bar.update(1)
                if bar is not None:
                    bar.set_postfix(attempts=attempts, expert_ok=f"{successes / attempts:.0%}")
                if len(names) >= n:
                    break
            results.close()  # stops the workers
            if len(names) < n:
                raise RuntimeError(
                    f"only {len(names)} of {n} demos after {attempts} attempts "
                    f"({successes} expert successes, {replay_failures} failed replays): "
                    f"raise max_attempts?")
            write_index(f, names, env_args, valid_ratio, seed, attrs={
                "generator": "dp_fast.sim.demos (scripted expert)", "task": task, "seed": int(seed),
                "attempts": int(attempts), "expert_successes": int(successes), "perturb": float(perturb)})
    finally:
        results.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t_start
    return {
        "task": task,
        "path": str(out_path),
        "n": n,
        "attempts": attempts,
        "successes": successes,
        "success_rate": successes / attempts,
        "replay_failures": replay_failures,
        "total_samples": total,
        "mean_length": float(np.mean(lengths)),
        "seconds": seconds,
        "demos_per_min": 60.0 * n / seconds,
        "expert_seconds": t_expert,   # summed over workers
        "record_seconds": t_record,   # summed over workers
        "workers": workers,
        "bytes": out_path.stat().st_size,
        "failures": failures,
    }


# ----------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `dp-fast demos`."""
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="robosuite task")
    parser.add_argument("--n", type=int, required=True, help="number of successful demos to write")
    parser.add_argument("--out", required=True, help="output .hdf5 path (written atomically)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (~1 GB each)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (episode k uses 1e6*(seed+1)+k)")
    parser.add_argument("--max-attempts", type=int, default=None, help="default 2n+20")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="expert's step limit (default: tasks.TASK_TABLE's expert_max_steps, "
                             "400 lift/can, 500 square)")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--cameras", nargs="+", default=list(DEFAULT_CAMERAS))
    parser.add_argument("--perturb", type=float, default=0.0,
                        help="recovery data: push the expert off its path by a smooth perturbation of this "
                             "std (action units) while it reaches the object, and label each visited state "
                             "with the expert's own action (executed ones in executed_actions)")
    parser.add_argument("--next-obs", action="store_true", help="also store next_obs (doubles the size)")
    parser.add_argument("--valid-ratio", type=float, default=0.1)
    parser.add_argument("--no-compress", action="store_true", help="store images uncompressed")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def run(args: argparse.Namespace) -> int:
    # SIGTERM -> exception, so that the temporary file is removed
    def _term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = None
    try:
        old = signal.signal(signal.SIGTERM, _term)
    except ValueError:  # not the main thread
        pass
    try:
        stats = generate_demos(
            args.task, args.n, args.out, workers=args.workers, seed=args.seed,
            max_attempts=args.max_attempts, progress=not args.no_progress, image_size=args.image_size,
            cameras=args.cameras, max_steps=args.max_steps, next_obs=args.next_obs,
            perturb=args.perturb,
            valid_ratio=args.valid_ratio, compression=None if args.no_compress else "gzip")
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): nothing written to {args.out}", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
    print(f"wrote {stats['n']} {stats['task']} demos ({stats['total_samples']} steps, "
          f"{stats['bytes'] / 2**20:.1f} MiB) to {stats['path']}")
    print(f"expert success {stats['successes']}/{stats['attempts']} = {stats['success_rate']:.1%}"
          + (f", {stats['replay_failures']} failed replays" if stats["replay_failures"] else "")
          + f"; {stats['seconds']:.0f} s, {stats['demos_per_min']:.1f} demos/min with {stats['workers']} worker(s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-fast demos", description="scripted-expert demos (robomimic hdf5)")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
