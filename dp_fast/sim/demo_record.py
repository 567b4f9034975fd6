"""The demo generator's attempts: run the expert with the cameras off, replay a success with them on.

`DemoRecorder.attempt(k, seed)` runs attempt k (episode seed `episode_seed(seed, k)`) and returns its
result, with the recorded episode when the expert succeeded and its replay did too; `attempt_results`
yields the results of attempts 0, 1, ... in order, from this process or from a pool of worker processes
(spawn) that compute ahead, so the results do not depend on the number of workers.

Rendering costs ~4x the physics (~30 ms against ~7 ms a step here), hence the two passes. Replays are
exact: both runs start through `SimEnv.reset_to`, which rebuilds the controllers from the restored state,
and the replay's own success is checked again.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

from .env import make_env
from .experts import make_expert, run_expert
from .tasks import expert_max_steps
from .threads import single_threaded_children

SEED_STRIDE = 1_000_000


def episode_seed(seed: int, k: int) -> int:
    """Seed of attempt k for a run with base `seed`: 1e6 * (seed + 1) + k, clear of the evaluation
    test seeds (100000 + i)."""
    if seed < 0:
        raise ValueError("seed must be >= 0")
    return SEED_STRIDE * (int(seed) + 1) + int(k)


class DemoRecorder:
    """One env (cameras available) and the expert settings; runs attempts."""

    def __init__(self, env_args: Mapping[str, Any], max_steps: Optional[int], hold_steps: int,
                 next_obs: bool, perturb: float = 0.0):
        self.env = make_env(env_args)
        self.max_steps = expert_max_steps(self.env.task) if max_steps is None else int(max_steps)
        self.hold_steps = int(hold_steps)
        self.next_obs = bool(next_obs)
        self.perturb = float(perturb)

    def attempt(self, k: int, seed: int) -> Dict[str, Any]:
        """{"k", "seed", "success" (the expert's), "steps", "phase" (the expert's last), "t_expert",
        "t_record" (seconds), "replay_ok" (None without a success), "demo" (None unless recorded)}."""
        env = self.env
        ep_seed = episode_seed(seed, k)
        t0 = time.perf_counter()
        env.set_cameras(False)
        env.reset(seed=ep_seed)
        state0 = env.get_state()
        env.reset_to(state0)  # the replay starts through reset_to too: identical controller state
        expert = make_expert(env, seed=ep_seed)
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


# ----------------------------------------------------------------------------------- worker processes
_WORKER: Optional[DemoRecorder] = None
_STOP = None  # the pool's stop event: set, the attempts not started yet are skipped


def _worker_init(env_args, max_steps, hold_steps, next_obs, perturb, stop):
    global _WORKER, _STOP
    # a worker ignores Ctrl-C: the parent handles it and stops the pool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STOP = stop
    _WORKER = DemoRecorder(env_args, max_steps, hold_steps, next_obs, perturb)


def _worker_attempt(job):
    k, seed = job
    if _STOP.is_set():
        return None
    return _WORKER.attempt(k, seed)


def attempt_results(env_args: Mapping[str, Any], n_jobs: int, seed: int, workers: int,
                    max_steps: Optional[int], hold_steps: int, next_obs: bool,
                    perturb: float = 0.0) -> Iterator[Dict[str, Any]]:
    """Results of attempts 0 .. n_jobs - 1 in order of k (with workers > 1, computed ahead by a pool of
    spawned processes; closing the generator stops them)."""
    if workers <= 1:
        rec = DemoRecorder(env_args, max_steps, hold_steps, next_obs, perturb)
        try:
            for k in range(n_jobs):
                yield rec.attempt(k, seed)
        finally:
            rec.close()
        return
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    with single_threaded_children():
        pool = ctx.Pool(workers, initializer=_worker_init,
                        initargs=(env_args, max_steps, hold_steps, next_obs, perturb, stop))
    try:
        yield from pool.imap(_worker_attempt, ((k, seed) for k in range(n_jobs)), chunksize=1)
    finally:
        # Not pool.terminate(): a worker killed while it sends a result holds the result queue's lock
        # and the pool's shutdown then waits on it for ever (seen at the end of `dp-fast demos`). The
        # workers skip what is left and finish the attempt they are in (one episode at most).
        stop.set()
        pool.close()
        pool.join()
