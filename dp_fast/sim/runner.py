"""Policy rollouts in robosuite: envs in worker processes, the policy batched in this process.

    metrics = run_rollouts(policy, task="lift", n_test=10, n_envs=2, video_dir="out/videos")

Evaluation as the original diffusion_policy's robomimic image runner does it:

- the policy sees the last n_obs_steps observations (the first one repeated at reset) and the env runs
  the actions each call returns; an episode stops at max_steps (default: the task's limit in
  `tasks.TASK_TABLE`, 400 for lift / can / square as in the original for ph data);
- train episodes start from a dataset demo's first stored state (`data/demo_{train_start_idx + i}`,
  the dataset's env_args); test episodes from seeded resets (seed, seed + 1, ...);
- score = best reward over the episode (1 on success); `<split>/mean_score` is the mean per split.

Where it differs: an episode stops at its first success (its score cannot change any more), and the
envs do not run in fixed groups: a worker that finishes an episode takes the next one, and each policy
call batches the observations of all envs waiting for actions (B <= n_envs).

Each env lives in its own worker process, and every reply is awaited at most `timeout_s` seconds: a
worker that crashes, hangs or raises fails its episode (score 0, the error in `metrics["errors"]`) and
is replaced; an exception from the policy fails the episodes of that batch.

With `control_hz` the robot runs against a control rate, synchronously or (`async_inference`) while the
next chunk is computed; `timing` holds the arithmetic and its description.

The pieces: `episodes` (what to run, checked before anything starts), `workers` (the env processes and
their handles), `timing` (control-rate arithmetic), `metrics` (bookkeeping and the returned dict); this
module schedules them.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .episodes import RolloutPlan, plan_rollouts
from .metrics import RolloutLog
from .timing import GRIPPER, chunk_commands, lag_ticks, plan_chunk
from .workers import WorkerFault, WorkerHandle, mp_context, start_worker


def run_rollouts(policy, *, task: Optional[str] = None, dataset=None, n_train: int = 0, n_test: int = 10,
                 n_envs: int = 2, max_steps: Optional[int] = None, video_dir=None, n_videos: int = 1,
                 seed: int = 100000, train_start_idx: int = 0, cameras: Optional[Sequence[str]] = None,
                 timeout_s: float = 60.0, control_hz: Optional[float] = None, async_inference: bool = False,
                 progress: bool = True, stop_on_success: bool = True, startup_timeout_s: float = 300.0,
                 warmup: bool = True, trace_dir=None, action_steps: Optional[int] = None) -> Dict[str, Any]:
    """Roll `policy` out; returns metrics (the keys are listed in `dp_fast.sim.metrics`).

    policy: a DiffusionPolicy or any object with `predict_action({key: (B, To, ...) tensor}) ->
    {"action": (B, Ta, action_dim)}`, `n_obs_steps` and `config.shape_meta` (or `shape_meta`); images
    are given as (B, To, 3, H, W) uint8, low-dim keys as float32. action_dim is the env's (7).
    task: 'lift' / 'can' / 'square' (or a robosuite env name); with `dataset` (a robomimic hdf5 file)
    the envs are built from its env_args, and train episodes start from its demos' first states.
    cameras: cameras the envs render (default: those of the policy's rgb keys, plus `agentview` for
    videos). Videos: the first n_videos episodes of each split, `agentview` frames, in video_dir.
    trace_dir: every episode's per-step trace (dp_fast.sim.trace) there, one JSON-lines file each.
    action_steps: execute only the first action_steps actions of each chunk the policy returns before
    calling it again (for a DiffusionPolicy the same as a smaller n_action_steps: the chunk starts at
    the current observation step); None runs whole chunks.
    warmup: untimed policy calls on zero observations (each batch size up to n_envs) while the workers
    start, so that the latencies are those of a warm policy (their time is reported as "warmup_ms").
    Latency of a call: predict_action on the batch already on the policy's device, and the actions back
    on the host as float numpy.
    """
    if async_inference and not control_hz:
        raise ValueError("async_inference needs control_hz (the control rate that the policy runs against)")
    if action_steps is not None:
        if int(action_steps) != action_steps or action_steps < 1:
            raise ValueError(f"action_steps must be an integer >= 1 (or None: whole chunks), got {action_steps}")
        action_steps = int(action_steps)
    plan = plan_rollouts(policy, task=task, dataset=dataset, n_train=n_train, n_test=n_test, seed=seed,
                         train_start_idx=train_start_idx, cameras=cameras, video_dir=video_dir,
                         n_videos=n_videos, max_steps=max_steps, trace_dir=trace_dir)
    device = getattr(policy, "device", torch.device("cpu"))
    t_start = time.perf_counter()
    log = RolloutLog(len(plan.episodes), progress)
    envs = _Envs(plan.worker_config(policy.n_obs_steps, stop_on_success), log, timeout_s, startup_timeout_s)
    try:
        envs.start(max(1, min(int(n_envs), len(plan.episodes))))
        if warmup:  # while the workers start
            log.warmup_s = _warm_up(policy, plan.obs_meta, int(policy.n_obs_steps), device, len(envs.handles))
        envs.wait_ready()
        log.startup_s = time.perf_counter() - t_start
        _run_episodes(policy, plan, envs, log, device, control_hz, async_inference, action_steps)
    finally:
        envs.close()
        log.close()
    m = log.summary(plan.episodes, control_hz, async_inference, time.perf_counter() - t_start, plan.max_steps)
    if action_steps is not None:
        m["action_steps"] = action_steps
    return m


def _run_episodes(policy, plan: RolloutPlan, envs: "_Envs", log: RolloutLog, device, control_hz, async_inference,
                  action_steps: Optional[int]):
    """Until every episode has ended: start episodes on free envs, collect replies, call the policy on
    the envs waiting for actions and send each its actions."""
    queue = deque(plan.episodes)
    while True:
        for s in envs.slots:
            if s.ep is None and queue:
                s.ep = queue.popleft()
                envs.send(s, "reset", s.ep)
        active = [s for s in envs.slots if s.ep is not None]
        if not active and not queue:
            return
        for s in active:
            envs.drain(s)
        ready = [s for s in envs.slots if s.ep is not None and s.obs is not None and s.expect == 0]
        if not ready:
            continue
        obs = [s.obs for s in ready]
        if async_inference:  # the rest of the current chunks runs while the policy computes the next
            for s in ready:
                envs.run_ahead(s)
        act, error, latency = _call_policy(policy, obs, plan.obs_meta, device, envs.action_dim)
        if act is not None and action_steps is not None:
            if action_steps > act.shape[1]:
                raise ValueError(f"action_steps={action_steps} is more than the {act.shape[1]} actions of "
                                 f"the policy's chunks")
            act = act[:, :action_steps]
        log.policy_call(latency, len(ready))
        lag = lag_ticks(latency, control_hz) if control_hz else 0
        for i, s in enumerate(ready):
            s.obs = None
            envs.drain(s)  # acks of the actions run ahead
            if s.ep is None:
                continue
            if error is not None:
                envs.finish(s, error=error)
                continue
            p = plan_chunk(len(act[i]), lag, s.ran_ahead, async_inference, plan.max_steps - s.steps)
            if control_hz:
                log.chunk_request(p)
            cmd, s.pending = chunk_commands(act[i], p, s.grip)
            s.grip = float(cmd[-1, GRIPPER])
            s.ran_ahead = 0
            envs.send(s, "step", (cmd, True))


def _warm_up(policy, meta: Mapping[str, Any], n_obs_steps: int, device, n_envs: int) -> float:
    """Policy calls on zero observations for batch sizes n_envs, ..., 1 (first calls of a batch size
    allocate, compile or capture); returns the seconds they took."""
    t0 = time.perf_counter()
    for b in sorted({n_envs, 1} | set(range(1, min(n_envs, 8) + 1)), reverse=True):
        dummy = {k: torch.zeros((b, n_obs_steps, *m["shape"]),
                                dtype=torch.uint8 if m.get("type") == "rgb" else torch.float32).to(device)
                 for k, m in meta.items()}
        with torch.no_grad():
            policy.predict_action(dummy)
    return time.perf_counter() - t0


def _call_policy(policy, obs: List[Mapping[str, np.ndarray]], meta: Mapping[str, Any], device, action_dim: int):
    """One batched call -> (actions (B, Ta, action_dim) float numpy or None, error or None, latency s)."""
    batch = {k: torch.from_numpy(np.stack([o[k] for o in obs])).to(device) for k in meta}
    t0 = time.perf_counter()
    act, error = None, None
    try:
        with torch.no_grad():
            out = policy.predict_action(batch)
        act = out["action"]
        act = act.detach().float().cpu().numpy() if torch.is_tensor(act) else np.asarray(act, float)
        if act.ndim != 3 or act.shape[0] != len(obs) or act.shape[2] != action_dim:
            raise ValueError(f"policy returned action of shape {act.shape}, "
                             f"expected ({len(obs)}, Ta, {action_dim})")
    except Exception as e:
        act, error = None, f"policy raised: {type(e).__name__}: {e}"
    return act, error, time.perf_counter() - t0


class _Slot:
    """One env: its worker and the state of the episode it runs."""

    def __init__(self, worker: WorkerHandle, action_dim: int):
        self.worker = worker
        self.action_dim = action_dim
        self.clear()

    def clear(self) -> None:
        self.ep: Optional[Dict[str, Any]] = None
        self.obs = None            # {key: (To, ...)} awaiting a policy call
        self.expect = 0            # replies outstanding
        self.pending = np.zeros((0, self.action_dim))  # actions of the current chunk still to run (async)
        self.ran_ahead = 0         # of which sent to run during the current policy call
        self.grip = -1.0           # last gripper command (open at reset)
        self.steps = 0             # env steps of the episode so far


class _Envs:
    """The env slots: commands out, replies in, episode ends, and replacing a failed worker."""

    def __init__(self, cfg: Mapping[str, Any], log: RolloutLog, timeout_s: float, startup_timeout_s: float):
        self.ctx = mp_context()
        self.cfg = cfg
        self.log = log
        self.timeout_s = timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.handles: List[WorkerHandle] = []  # every worker started, for the final cleanup
        self.slots: List[_Slot] = []
        self.action_dim = 0

    def start(self, n: int) -> None:
        for _ in range(n):
            self.handles.append(start_worker(self.ctx, self.cfg))

    def wait_ready(self) -> None:
        dims = {int(w.wait_ready(self.startup_timeout_s)["action_dim"]) for w in self.handles}
        self.action_dim = dims.pop()  # one env_args: one action size
        self.slots = [_Slot(w, self.action_dim) for w in self.handles]

    def send(self, s: _Slot, cmd: str, arg) -> bool:
        try:
            s.worker.send((cmd, arg))
        except WorkerFault as e:
            self._fault(s, e)
            return False
        s.expect += 1
        return True

    def receive(self, s: _Slot) -> Optional[str]:
        """Next reply of slot s: "obs" / "ack", or None when the episode ended (done or failed)."""
        try:
            kind, obs, info = s.worker.recv(self.timeout_s)
        except WorkerFault as e:
            self._fault(s, e)
            return None
        s.expect -= 1
        s.steps = info["steps"]
        if kind == "done":
            self.finish(s, info)
            return None
        if kind == "obs":
            s.obs = obs
        return kind

    def drain(self, s: _Slot) -> None:
        """Collect all outstanding replies of s (or until its episode ends)."""
        while s.ep is not None and s.expect > 0:
            self.receive(s)

    def run_ahead(self, s: _Slot) -> None:
        """Async mode: send the rest of s's current chunk to run while the policy computes."""
        if len(s.pending):
            s.ran_ahead = len(s.pending)
            s.grip = float(s.pending[-1, GRIPPER])
            pending, s.pending = s.pending, np.zeros((0, self.action_dim))
            self.send(s, "step", (pending, False))

    def finish(self, s: _Slot, info=None, error: Optional[str] = None) -> None:
        self.log.episode_done(s.ep, info, error)
        s.clear()

    def _fault(self, s: _Slot, exc: Exception) -> None:
        self.finish(s, error=str(exc))
        s.worker.kill(force=True)
        self.log.restarts += 1
        s.worker = start_worker(self.ctx, self.cfg)
        self.handles.append(s.worker)
        s.worker.wait_ready(self.startup_timeout_s)

    def close(self) -> None:
        for w in self.handles:
            if not w.stopped:
                w.kill()
