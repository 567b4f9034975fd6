"""Policy rollouts in robosuite: environments in worker processes, the policy batched in this process.

    metrics = run_rollouts(policy, task="lift", n_test=10, n_envs=2, video_dir="out/videos")

As the original's robomimic image runner (REFERENCE.md, Rollouts):

- multi-step wrapper: the policy sees the last n_obs_steps observations (the first repeated at reset)
  and the env executes the n_action_steps actions of each call; an episode stops at max_steps
  (default 400, the original's value for ph data);
- train episodes start from a dataset demo's first stored state (`data/demo_{train_start_idx + i}`,
  the dataset's env_args); test episodes from seeded resets (seed, seed + 1, ...);
- score = max reward over the episode (1 on success); `<split>/mean_score` is the mean per split.
  Differences: an episode stops at its first success (its score cannot change any more), and the envs
  do not run in fixed groups: a worker that finishes an episode takes the next one, and each policy
  call batches the observations of all envs waiting for actions (B <= n_envs).

Each env lives in its own worker process (spawn), talking over a pipe. Every reply is awaited at most
`timeout_s` seconds: a worker that crashes, hangs or raises fails its episode (score 0, the error is
recorded in `metrics["errors"]`) and is replaced by a new one; an exception from the policy fails the
episodes of that batch. Per-call policy latency (observation transfer, predict_action, actions back on
the host) is recorded.

Control-rate mode (`control_hz`): the simulated robot executes one action every 1 / control_hz seconds
of simulated wall time. A policy call of measured latency L delivers its chunk `lag = ceil(L hz) - 1`
ticks late (0 when it is faster than one control period). The chunk's actions are time-indexed:
`action[j]` is meant for tick `obs_tick + j`.
- synchronous (default): the robot waits for each chunk. Every tick of lag is a hold tick (zero motion,
  the last gripper command kept); a call with lag > 0 is a deadline miss. The chunk then runs whole.
- `async_inference=True`: the next chunk is computed from the latest observation while the workers
  execute the rest of the current one (overlapping in time: they are separate processes). Each chunk is
  cut short so that `lag` of its actions are left to execute during the next call (lag taken from the
  last call); when the new chunk arrives, its actions whose ticks have passed are skipped. If the
  current chunk runs out first, the robot holds (deadline miss) until the new one arrives.
Hold ticks count towards max_steps. Misses are reported as `deadline_misses` (calls, per env) and
`deadline_miss_ticks`.
"""
from __future__ import annotations

import math
import os
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

DEFAULT_MAX_STEPS = {"lift": 400, "can": 400, "square": 400}
VIDEO_CAMERA = "agentview"
# video frames are rendered at least this size: a policy may see 48 px images, a person wants more
VIDEO_MIN_SIZE = 128


# =========================================================================================== worker side
def _worker_main(conn, cfg: Mapping[str, Any]) -> None:
    """Worker process: one env; answers reset / step / close commands until told to close."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        w = _EnvWorker(cfg)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", {"pid": os.getpid()}))
    while True:
        try:
            cmd, arg = conn.recv()
        except (EOFError, OSError):
            break
        if cmd == "close":
            break
        try:
            reply = w.reset(arg) if cmd == "reset" else w.step(*arg)
        except BaseException:
            reply = ("error", traceback.format_exc())
        conn.send(reply)
    w.close()


class _EnvWorker:
    def __init__(self, cfg: Mapping[str, Any]):
        from .env import make_env

        self.cfg = cfg
        self.env = make_env(cfg["env_args"])
        self.policy_cams = list(cfg["policy_cameras"])
        self.env.set_cameras(bool(self.policy_cams), self.policy_cams)
        self.keys = list(cfg["obs_keys"])
        self.n_obs = int(cfg["n_obs_steps"])
        self.max_steps = int(cfg["max_steps"])
        self.fps = float(cfg["env_args"]["env_kwargs"].get("control_freq", 20))

    def _policy_obs(self, obs):
        from .env import obs_to_policy

        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"the env's observation lacks {missing}; it has {sorted(obs)}")
        return obs_to_policy(obs, self.keys)

    def _stacked(self):
        return {k: np.stack([o[k] for o in self.hist]) for k in self.keys}  # (To, ...)

    def reset(self, ep: Mapping[str, Any]):
        self.video = ep.get("video")
        self.fault = ep.get("fault") or {}
        # the video camera renders in recorded episodes only
        cams = self.policy_cams + ([self.cfg["video_camera"]] if self.video else [])
        self.env.set_cameras(bool(cams), list(dict.fromkeys(cams)))
        obs = self.env.reset_to(ep["state"]) if "state" in ep else self.env.reset(seed=int(ep["seed"]))
        self.frames = [self._frame(obs)] if self.video else []
        self.hist = deque([self._policy_obs(obs)] * self.n_obs, maxlen=self.n_obs)
        self.steps, self.reward, self.success = 0, 0.0, False
        return ("obs", self._stacked(), {"steps": 0, "done": False})

    def _frame(self, obs):
        return obs[f"{self.cfg['video_camera']}_image"]

    def step(self, actions, want_obs: bool):
        done = False
        for a in np.asarray(actions, dtype=np.float64).reshape(-1, 7):
            self._inject(self.steps)
            obs, r, _, info = self.env.step(a)
            self.steps += 1
            self.reward = max(self.reward, float(r))
            self.success = self.success or bool(info["success"])
            self.hist.append(self._policy_obs(obs))
            if self.video:
                self.frames.append(self._frame(obs))
            done = self.steps >= self.max_steps or (self.cfg["stop_on_success"] and self.success)
            if done:
                break
        info = {"steps": self.steps, "done": done}
        if not done:
            return ("obs" if want_obs else "ack", self._stacked() if want_obs else None, info)
        info.update(reward=self.reward, success=self.success, video=None)
        if self.video:
            from .video import write_video

            info["video"] = write_video(self.video, np.stack(self.frames), fps=self.fps)
            self.frames = []
        return ("done", None, info)

    def _inject(self, step: int) -> None:
        """Test-only faults (run_rollouts' `fault_injection`)."""
        f = self.fault
        if f.get("crash_at_step") == step:
            os._exit(17)
        if f.get("hang_at_step") == step:
            time.sleep(1e6)
        if f.get("raise_at_step") == step:
            raise RuntimeError(f"injected fault at step {step}")

    def close(self):
        self.env.close()


# =========================================================================================== parent side
class WorkerFault(RuntimeError):
    pass


class _Worker:
    """Handle of one worker process."""

    def __init__(self, ctx, cfg):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, cfg), daemon=True)
        self.proc.start()
        child.close()

    def send(self, msg) -> None:
        try:
            self.conn.send(msg)
        except (BrokenPipeError, EOFError, OSError) as e:
            raise WorkerFault(f"worker (pid {self.proc.pid}) is gone: {e}") from None

    def recv(self, timeout: float):
        try:
            if not self.conn.poll(timeout):
                raise WorkerFault(f"worker (pid {self.proc.pid}) did not answer within {timeout:g} s (hung?)")
            msg = self.conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            self.proc.join(timeout=1.0)
            raise WorkerFault(f"worker (pid {self.proc.pid}) died (exit code {self.proc.exitcode})") from None
        if msg[0] == "error":
            raise WorkerFault(f"worker raised:\n{msg[1]}")
        return msg

    def kill(self, force: bool = False) -> None:
        if not force:
            try:
                self.conn.send(("close", None))
            except Exception:
                pass
            self.proc.join(timeout=2.0)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5.0)
        self.conn.close()


class _Slot:
    """One env: its worker and the state of the episode it runs."""

    def __init__(self, worker):
        self.worker = worker
        self.ep: Optional[Dict[str, Any]] = None
        self.clear()

    def clear(self):
        self.ep = None
        self.obs = None            # {key: (To, ...)} awaiting a policy call
        self.expect = 0            # replies outstanding
        self.pending = np.zeros((0, 7))  # actions of the current chunk still to run (async mode)
        self.grip = -1.0           # last gripper command (open at reset)
        self.steps = 0             # env steps of the episode so far


def _policy_obs_meta(policy) -> Dict[str, Any]:
    cfg = getattr(policy, "config", None)
    meta = getattr(cfg, "shape_meta", None) or getattr(policy, "shape_meta", None)
    if meta is None or "obs" not in meta:
        raise ValueError("policy needs config.shape_meta (or shape_meta) with an 'obs' entry")
    return dict(meta["obs"])


def _read_train_states(dataset, n_train: int, start: int):
    import h5py

    from .env import env_args_from_json

    with h5py.File(dataset, "r") as f:
        env_args = env_args_from_json(f["data"].attrs["env_args"])
        eps = []
        for i in range(start, start + n_train):
            if f"demo_{i}" not in f["data"]:
                raise ValueError(f"{dataset}: no data/demo_{i} for train episode {i - start} (train_start_idx "
                                 f"{start}, n_train {n_train}; the file has {len(f['data'])} demos)")
            g = f["data"][f"demo_{i}"]
            state = {"states": np.asarray(g["states"][0])}
            if "model_file" in g.attrs:
                state["model"] = g.attrs["model_file"]
            eps.append({"split": "train", "demo": i, "state": state})
    return env_args, eps


def _env_args_for(policy_meta, task, dataset_env_args, cameras, video):
    """env_args with the policy's cameras at the policy's image size, plus the video camera (when it is
    not a policy camera) at max(policy size, VIDEO_MIN_SIZE)."""
    from .env import camera_size, make_env_args

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


def _check_obs_keys(meta, env_args) -> None:
    from .env import ROBOT_KEYS

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


def _mp_context():
    """forkserver where available: its server imports robosuite (and this package) once and forks each
    worker from that state, so a worker starts (or is replaced) without re-importing them; it never
    creates a GL context, so every worker makes its own. Elsewhere spawn."""
    import multiprocessing as mp

    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["dp_fast.sim.runner", "dp_fast.sim.env", "robosuite"])
    return ctx


def _lag(latency_s: float, hz: float) -> int:
    return max(0, int(math.ceil(latency_s * hz - 1e-9)) - 1)


def run_rollouts(policy, *, task: Optional[str] = None, dataset=None, n_train: int = 0, n_test: int = 10,
                 n_envs: int = 2, max_steps: Optional[int] = None, video_dir=None, n_videos: int = 1,
                 seed: int = 100000, train_start_idx: int = 0, cameras: Optional[Sequence[str]] = None,
                 timeout_s: float = 60.0, control_hz: Optional[float] = None, async_inference: bool = False,
                 progress: bool = True, stop_on_success: bool = True, startup_timeout_s: float = 300.0,
                 warmup: bool = True,
                 fault_injection: Optional[Mapping[int, Mapping[str, int]]] = None) -> Dict[str, Any]:
    """Roll `policy` out; returns metrics (see the module docstring for the semantics).

    policy: a DiffusionPolicy or any object with `predict_action({key: (B, To, ...) tensor}) ->
    {"action": (B, Ta, 7)}`, `n_obs_steps` and `config.shape_meta` (or `shape_meta`); images are given
    as (B, To, 3, H, W) uint8, low-dim keys as float32.
    task: 'lift' / 'can' / 'square' (or a robosuite env name); with `dataset` (a robomimic hdf5 file)
    the envs are built from its env_args, and train episodes start from its demos' first states.
    cameras: cameras the envs render (default: those of the policy's rgb keys, plus `agentview` for
    videos). Videos: the first n_videos episodes of each split, `agentview` frames, in video_dir.
    warmup: untimed policy calls on zero observations (each batch size up to n_envs) while the workers
    start, so that the latencies are those of a warm policy (their time is reported as "warmup_ms").
    fault_injection: testing only, {episode index: {"crash_at_step" | "hang_at_step" | "raise_at_step": k}}
    (episodes indexed in run order: train first, then test).

    Returns {"test/mean_score", "test/success_rate", "test/scores", "test/successes", "test/lengths",
    "test/seeds", the same under "train/" with "train/demos" when n_train > 0, "n_episodes", "errors",
    "latency_ms_p50" / "_p90" / "_p99" / "_max" / "_mean", "n_policy_calls", "mean_batch",
    "deadline_misses" / "deadline_miss_ticks" / "deadline_miss_rate" (with control_hz), "video_paths",
    "worker_restarts", "env_steps", "wall_s"}.
    """
    import torch

    if async_inference and not control_hz:
        raise ValueError("async_inference needs control_hz (the control rate that the policy runs against)")
    if n_train > 0 and dataset is None:
        raise ValueError("train episodes (n_train > 0) need a dataset for their initial states")
    meta = _policy_obs_meta(policy)
    ds_env_args, episodes = (None, [])
    if dataset is not None:
        ds_env_args, episodes = _read_train_states(dataset, n_train, train_start_idx) if n_train > 0 else (
            _read_train_states(dataset, 0, 0)[0], [])
    elif task is None:
        raise ValueError("give a task or a dataset")
    episodes += [{"split": "test", "seed": int(seed) + i} for i in range(n_test)]
    if not episodes:
        raise ValueError("no episodes: n_train and n_test are both 0")
    env_args = _env_args_for(meta, task, ds_env_args, cameras, video_dir is not None and n_videos > 0)
    from .env import task_for

    try:
        task_name = task_for(env_args["env_name"])
    except ValueError:
        task_name = env_args["env_name"]
    max_steps = DEFAULT_MAX_STEPS.get(task_name, 400) if max_steps is None else int(max_steps)
    counts = {"train": 0, "test": 0}
    for i, ep in enumerate(episodes):
        k = counts[ep["split"]]
        counts[ep["split"]] += 1
        if video_dir is not None and k < n_videos:
            tag = f"demo{ep['demo']}" if ep["split"] == "train" else f"seed{ep['seed']}"
            ep["video"] = str(Path(video_dir) / f"{ep['split']}_{k:03d}_{tag}.mp4")
        if fault_injection and i in fault_injection:
            ep["fault"] = dict(fault_injection[i])
        ep["index"] = i
    _check_obs_keys(meta, env_args)
    cfg = {"env_args": env_args, "obs_keys": list(meta), "n_obs_steps": int(policy.n_obs_steps),
           "max_steps": max_steps, "stop_on_success": bool(stop_on_success), "video_camera": VIDEO_CAMERA,
           "policy_cameras": [k[: -len("_image")] for k, m in meta.items() if m.get("type") == "rgb"]}
    device = getattr(policy, "device", torch.device("cpu"))

    ctx = _mp_context()
    results: Dict[int, Dict[str, Any]] = {}
    errors: List[Dict[str, Any]] = []
    latencies: List[float] = []
    batches: List[int] = []
    stats = {"misses": 0, "miss_ticks": 0, "env_calls": 0, "restarts": 0, "env_steps": 0}
    queue = deque(episodes)
    t_start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(episodes), desc="rollouts", unit="ep", dynamic_ncols=True)

    def new_worker():
        saved = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        for v in saved:  # the workers share few cores
            os.environ[v] = "1"
        try:
            return _Worker(ctx, cfg)
        finally:
            for v, val in saved.items():
                if val is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = val

    def wait_ready(w):
        try:
            w.recv(startup_timeout_s)
        except WorkerFault as e:
            w.kill()
            raise RuntimeError(f"a rollout worker could not start: {e}") from None

    def finish(s, info=None, error=None):
        ep = s.ep
        r = {"score": 0.0, "success": False, "steps": 0, "error": error, "video": None}
        if info is not None:
            r.update(score=float(info["reward"]), success=bool(info["success"]), steps=int(info["steps"]),
                     video=info.get("video"))
        if error is not None:
            errors.append({"episode": ep["index"], "split": ep["split"],
                           **({"demo": ep["demo"]} if "demo" in ep else {"seed": ep["seed"]}), "error": error})
        results[ep["index"]] = r
        s.clear()
        if bar is not None:
            bar.update(1)
            done = list(results.values())
            bar.set_postfix(success=f"{sum(x['success'] for x in done)}/{len(done)}")

    def fault(s, exc):
        finish(s, error=str(exc))
        s.worker.kill(force=True)
        stats["restarts"] += 1
        s.worker = new_worker()
        wait_ready(s.worker)

    def send(s, cmd, arg):
        try:
            s.worker.send((cmd, arg))
            s.expect += 1
            return True
        except WorkerFault as e:
            fault(s, e)
            return False

    def receive(s):
        """Next reply of slot s; handles episode end and faults. Returns the reply or None."""
        try:
            kind, obs, info = s.worker.recv(timeout_s)
        except WorkerFault as e:
            fault(s, e)
            return None
        s.expect -= 1
        s.steps = info["steps"]
        if kind == "done":
            stats["env_steps"] += info["steps"]
            finish(s, info)
            return None
        if kind == "obs":
            s.obs = obs
        return kind

    slots: List[_Slot] = []
    workers: List[_Worker] = []
    try:
        for _ in range(max(1, min(int(n_envs), len(episodes)))):
            workers.append(new_worker())
        if warmup:  # while the workers start: first calls of each batch size allocate, compile or capture
            t0 = time.perf_counter()
            n = len(workers)
            for b in sorted({n, 1} | set(range(1, min(n, 8) + 1)), reverse=True):
                dummy = {k: torch.zeros((b, cfg["n_obs_steps"], *m["shape"]),
                                        dtype=torch.uint8 if m.get("type") == "rgb" else torch.float32).to(device)
                         for k, m in meta.items()}
                with torch.no_grad():
                    policy.predict_action(dummy)
            stats["warmup_s"] = time.perf_counter() - t0
        for w in workers:
            wait_ready(w)
        stats["startup_s"] = time.perf_counter() - t_start
        slots = [_Slot(w) for w in workers]
        while True:
            for s in slots:
                if s.ep is None and queue:
                    s.ep = queue.popleft()
                    send(s, "reset", s.ep)
            active = [s for s in slots if s.ep is not None]
            if not active and not queue:
                break
            for s in active:
                while s.ep is not None and s.expect > 0:
                    receive(s)
            ready = [s for s in slots if s.ep is not None and s.obs is not None and s.expect == 0]
            if not ready:
                continue
            obs_b = [s.obs for s in ready]
            ran_ahead = {}
            if async_inference:
                for s in ready:
                    if len(s.pending):
                        ran_ahead[id(s)] = len(s.pending)
                        s.grip = float(s.pending[-1, 6])
                        send(s, "step", (s.pending, False))
                        s.pending = np.zeros((0, 7))
            batch = {k: torch.from_numpy(np.stack([o[k] for o in obs_b])).to(device) for k in meta}
            t0 = time.perf_counter()
            try:
                with torch.no_grad():
                    out = policy.predict_action(batch)
                act = out["action"]
                act = act.detach().float().cpu().numpy() if torch.is_tensor(act) else np.asarray(act, float)
                if act.ndim != 3 or act.shape[0] != len(ready) or act.shape[2] != 7:
                    raise ValueError(f"policy returned action of shape {act.shape}, "
                                     f"expected ({len(ready)}, Ta, 7)")
                error = None
            except Exception as e:
                error = f"policy raised: {type(e).__name__}: {e}"
            latency = time.perf_counter() - t0
            latencies.append(latency)
            batches.append(len(ready))
            lag = _lag(latency, control_hz) if control_hz else 0
            for i, s in enumerate(ready):
                s.obs = None
                while s.ep is not None and s.expect > 0:  # acks of the actions run ahead
                    receive(s)
                if s.ep is None:
                    continue
                if error is not None:
                    finish(s, error=error)
                    continue
                chunk = act[i].astype(np.float64)
                n = len(chunk)
                ahead = ran_ahead.get(id(s), 0)
                holds = max(0, lag - ahead) if ahead else lag
                late = holds > 0
                holds = min(holds, max(0, max_steps - s.steps))  # the episode may end first (s.steps: acks in)
                skip = min(max(lag, ahead), n - 1) if ahead else 0
                end = max(skip + 1, n - lag) if async_inference else n
                if control_hz:
                    stats["env_calls"] += 1
                    if late:
                        stats["misses"] += 1
                        stats["miss_ticks"] += holds
                hold = np.zeros((holds, 7))
                hold[:, 6] = s.grip
                cmd = np.concatenate([hold, chunk[skip:end]])
                s.pending = chunk[end:]
                s.grip = float(cmd[-1, 6])
                send(s, "step", (cmd, True))
    finally:
        for w in {id(w): w for w in workers + [s.worker for s in slots]}.values():
            if w.proc.is_alive() or not w.conn.closed:
                w.kill()
        if bar is not None:
            bar.close()
    return _metrics(episodes, results, errors, latencies, batches, stats, control_hz, async_inference,
                    time.perf_counter() - t_start, max_steps)


def _metrics(episodes, results, errors, latencies, batches, stats, control_hz, async_inference, wall, max_steps):
    m: Dict[str, Any] = {}
    for split in ("train", "test"):
        eps = [e for e in episodes if e["split"] == split]
        if not eps:
            continue
        res = [results[e["index"]] for e in eps]
        scores = [r["score"] for r in res]
        m[f"{split}/mean_score"] = float(np.mean(scores))
        m[f"{split}/success_rate"] = float(np.mean([r["success"] for r in res]))
        m[f"{split}/scores"] = scores
        m[f"{split}/successes"] = [r["success"] for r in res]
        m[f"{split}/lengths"] = [r["steps"] for r in res]
        key = "demos" if split == "train" else "seeds"
        m[f"{split}/{key}"] = [e["demo" if split == "train" else "seed"] for e in eps]
    lat = np.asarray(latencies, dtype=np.float64) * 1e3
    if len(lat):
        for q in (50, 90, 99):
            m[f"latency_ms_p{q}"] = float(np.percentile(lat, q))
        m["latency_ms_max"] = float(lat.max())
        m["latency_ms_mean"] = float(lat.mean())
    m["n_policy_calls"] = len(latencies)
    m["mean_batch"] = float(np.mean(batches)) if batches else 0.0
    if control_hz:
        m["control_hz"] = float(control_hz)
        m["async_inference"] = bool(async_inference)
        m["deadline_misses"] = stats["misses"]
        m["deadline_miss_ticks"] = stats["miss_ticks"]
        m["deadline_miss_rate"] = stats["misses"] / max(1, stats["env_calls"])
        m["n_chunk_requests"] = stats["env_calls"]
    m["n_episodes"] = len(episodes)
    m["max_steps"] = max_steps
    m["errors"] = errors
    m["video_paths"] = [results[e["index"]]["video"] for e in episodes if results[e["index"]]["video"]]
    m["worker_restarts"] = stats["restarts"]
    m["env_steps"] = stats["env_steps"]
    m["startup_s"] = stats.get("startup_s", 0.0)
    if "warmup_s" in stats:
        m["warmup_ms"] = stats["warmup_s"] * 1e3
    m["wall_s"] = wall
    return m
