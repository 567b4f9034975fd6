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

Throughput: rendering costs ~4x the physics (~30 ms against ~7 ms a step here), so each attempt first
runs the expert with the cameras off; only successful attempts are replayed, action by action, from
the same initial simulator state with the cameras on, and recorded. Episodes end 5 steps after the
first success, or fail at 400 steps (lift, can) / 500 (square). Replays are exact (`SimEnv.reset_to` rebuilds the
controllers from the restored state; both runs start through it), and the replay's own success is
checked again. Attempts run in worker processes (spawn), in order of their index, so the file's content
does not depend on the number of workers.

The file is written under a temporary name next to `out_path` and renamed at the end; on an error or
interrupt the temporary file is removed (a SIGKILL can leave a `*.partial` file, never a truncated
`out_path`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

import numpy as np

from .env import DEFAULT_CAMERAS, TASKS, make_env, make_env_args

SEED_STRIDE = 1_000_000


def episode_seed(seed: int, k: int) -> int:
    """Seed of attempt k for a run with base `seed`: 1e6 * (seed + 1) + k, clear of the evaluation
    test seeds (100000 + i)."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return SEED_STRIDE * (int(seed) + 1) + int(k)


# ----------------------------------------------------------------------------------- worker side
class _Recorder:
    """One env (cameras available) and the expert settings; runs attempts."""

    def __init__(self, env_args: Mapping[str, Any], max_steps: Optional[int], noise: float,
                 hold_steps: int, next_obs: bool, perturb: float = 0.0):
        from .experts import MAX_STEPS

        self.env = make_env(env_args)
        self.max_steps = MAX_STEPS.get(self.env.task, 500) if max_steps is None else int(max_steps)
        self.noise = float(noise)
        self.hold_steps = int(hold_steps)
        self.next_obs = bool(next_obs)
        self.perturb = float(perturb)

    def attempt(self, k: int, seed: int) -> Dict[str, Any]:
        from .experts import make_expert, run_expert

        env = self.env
        ep_seed = episode_seed(seed, k)
        t0 = time.perf_counter()
        env.set_cameras(False)
        env.reset(seed=ep_seed)
        state0 = env.get_state()
        env.reset_to(state0)  # the replay starts through reset_to too: identical controller state
        expert = make_expert(env, seed=ep_seed, noise=self.noise)
        res = run_expert(env, expert, max_steps=self.max_steps, hold_steps=self.hold_steps,
                         perturb=self.perturb)
        t1 = time.perf_counter()
        out: Dict[str, Any] = {"k": k, "seed": ep_seed, "success": res["success"], "steps": res["steps"],
                               "phase": expert.phase, "t_expert": t1 - t0, "t_record": 0.0,
                               "replay_ok": None, "demo": None}
        if res["success"]:
            demo = self._record(state0, res["executed"], res["actions"])
            out["replay_ok"] = demo is not None
            out["demo"] = demo
            out["t_record"] = time.perf_counter() - t1
        return out

    def _record(self, state0: Mapping[str, Any], actions: np.ndarray,
                labels: np.ndarray) -> Optional[Dict[str, Any]]:
        """Replay `actions` (what the expert's run executed) from state0 with the cameras on; the demo's
        "actions" are `labels` (equal to `actions` unless the run was perturbed)."""
        env = self.env
        env.set_cameras(True)
        try:
            obs = env.reset_to(state0)
            T = len(actions)
            states, rewards, dones = [], np.zeros(T), np.zeros(T, dtype=np.int64)
            obs_buf: Dict[str, List[np.ndarray]] = {k: [] for k in obs}
            next_buf: Dict[str, List[np.ndarray]] = {k: [] for k in obs} if self.next_obs else {}
            success = False
            for t in range(T):
                states.append(env.get_state(with_model=False)["states"])
                for key, v in obs.items():
                    obs_buf[key].append(v)
                obs, r, _, info = env.step(actions[t])
                success = info["success"]
                rewards[t] = r
                dones[t] = int(success or t == T - 1)
                for key, v in next_buf.items():
                    v.append(obs[key])
            if not success:
                return None
            demo = {
                "actions": np.asarray(labels, dtype=np.float64),
                "states": np.stack(states).astype(np.float64),
                "rewards": rewards,
                "dones": dones,
                "obs": {k: np.stack(v) for k, v in obs_buf.items()},
                "model_file": state0["model"],
            }
            if self.perturb > 0:
                demo["executed_actions"] = np.asarray(actions, dtype=np.float64)
            if self.next_obs:
                demo["next_obs"] = {k: np.stack(v) for k, v in next_buf.items()}
            return demo
        finally:
            env.set_cameras(False)

    def close(self):
        self.env.close()


_WORKER: Optional[_Recorder] = None


def _worker_init(env_args, max_steps, noise, hold_steps, next_obs, perturb):
    global _WORKER
    # a worker ignores Ctrl-C: the parent handles it and terminates the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER = _Recorder(env_args, max_steps, noise, hold_steps, next_obs, perturb)


def _worker_attempt(job):
    k, seed = job
    return _WORKER.attempt(k, seed)


# ----------------------------------------------------------------------------------- parent side
def _write_demo(grp_data, name: str, demo: Mapping[str, Any], seed: int, compression: Optional[str]):
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


def _split(n: int, valid_ratio: float, seed: int):
    if n < 2 or valid_ratio <= 0:
        return list(range(n)), []
    n_val = min(max(1, int(round(n * valid_ratio))), n - 1)
    valid = sorted(np.random.default_rng(seed).choice(n, n_val, replace=False).tolist())
    vs = set(valid)
    return [i for i in range(n) if i not in vs], valid


def _thread_env():
    """Single-threaded BLAS / OpenMP in the workers (several processes share few cores)."""
    saved = {}
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        if var not in os.environ:
            saved[var] = None
            os.environ[var] = "1"
    return saved


def _restore_env(saved):
    for var in saved:
        os.environ.pop(var, None)


def _results(env_args, n_jobs: int, seed: int, workers: int, max_steps, noise, hold_steps,
             next_obs, perturb=0.0) -> Iterator[Dict[str, Any]]:
    """Attempt results in order of k (speculatively computed ahead by the workers)."""
    if workers <= 1:
        rec = _Recorder(env_args, max_steps, noise, hold_steps, next_obs, perturb)
        try:
            for k in range(n_jobs):
                yield rec.attempt(k, seed)
        finally:
            rec.close()
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    saved = _thread_env()
    try:
        pool = ctx.Pool(workers, initializer=_worker_init,
                        initargs=(env_args, max_steps, noise, hold_steps, next_obs, perturb))
    finally:
        _restore_env(saved)
    try:
        yield from pool.imap(_worker_attempt, ((k, seed) for k in range(n_jobs)), chunksize=1)
    finally:
        pool.terminate()
        pool.join()


def generate_demos(task: str, n: int, out_path, workers: int = 1, seed: int = 0,
                   max_attempts: Optional[int] = None, progress: bool = True, *,
                   image_size: int = 84, cameras: Sequence[str] = DEFAULT_CAMERAS,
                   max_steps: Optional[int] = None, noise: float = 0.0, hold_steps: int = 5,
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
    import h5py

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
    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.partial")

    bar = None
    if progress:
        from tqdm import tqdm

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
    results = _results(env_args, max_attempts, seed, workers, max_steps, noise, hold_steps, next_obs,
                       perturb)
    try:
        with h5py.File(tmp_path, "w") as f:
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
                    _write_demo(data, name, res["demo"], res["seed"], compression)
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
            train, valid = _split(n, valid_ratio, seed)
            mask = f.create_group("mask")
            mask.create_dataset("train", data=np.array([names[i] for i in train], dtype="S"))
            mask.create_dataset("valid", data=np.array([names[i] for i in valid], dtype="S"))
            data.attrs["env_args"] = json.dumps(env_args)
            data.attrs["total"] = int(total)
            data.attrs["generator"] = "dp_fast.sim.demos (scripted expert)"
            data.attrs["task"] = task
            data.attrs["seed"] = int(seed)
            data.attrs["attempts"] = int(attempts)
            data.attrs["expert_successes"] = int(successes)
            data.attrs["perturb"] = float(perturb)
        os.replace(tmp_path, out_path)
    except BaseException:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        raise
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
                        help="episode step limit (default 400 lift/can, 500 square)")
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--cameras", nargs="+", default=list(DEFAULT_CAMERAS))
    parser.add_argument("--noise", type=float, default=0.0,
                        help="smooth perturbation of the expert's translation actions (action units)")
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
            cameras=args.cameras, max_steps=args.max_steps, noise=args.noise, next_obs=args.next_obs,
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
