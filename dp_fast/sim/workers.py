"""Rollout env workers: one robosuite env per process, driven over a pipe.

Worker side: `worker_main` runs in the child process around an `EnvWorker`, which owns the env, the
observation history the policy sees and the episode's counters. Commands and replies:

    ("reset", episode)           -> ("obs", stacked obs, {"steps": 0, "done": False})
    ("step", (actions, want_obs)) -> ("obs" | "ack", stacked obs or None, {"steps", "done": False})
                                  or ("done", None, {"steps", "done": True, "reward", "success", "video",
                                                     "trace"})
    ("close", None)              -> the process exits
    any command that raises      -> ("error", traceback)

On start the worker sends ("ready", {"pid", "action_dim"}): the env's own action size, which the parent
uses for everything it builds or checks (hold actions, the policy's output).

Parent side: `WorkerHandle` sends commands and waits for replies with a timeout; a worker that died,
did not answer in time or replied with an error raises `WorkerFault`, and the caller replaces it.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import traceback
from collections import deque
from typing import Any, Dict, Mapping

import numpy as np

from .env import make_env, obs_to_policy
from .threads import single_threaded_children
from .trace import EpisodeTrace
from .video import still_path, write_still, write_video



# =========================================================================================== child process
def worker_main(conn, cfg: Mapping[str, Any]) -> None:
    """Worker process: one env; answers reset / step commands until told to close."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        w = EnvWorker(cfg)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", {"pid": os.getpid(), "action_dim": w.action_dim}))
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


class EnvWorker:
    """One env and the episode it runs: the last n_obs_steps policy observations, steps, best reward,
    success and (in recorded episodes) the video frames.

    cfg: {"env_args", "obs_keys", "n_obs_steps", "max_steps", "stop_on_success", "video_camera",
    "policy_cameras"}.
    """

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.env = make_env(cfg["env_args"])
        self.action_dim = int(self.env.action_dim)
        self.policy_cams = list(cfg["policy_cameras"])
        self.env.set_cameras(bool(self.policy_cams), self.policy_cams)
        self.keys = list(cfg["obs_keys"])
        self.n_obs = int(cfg["n_obs_steps"])
        self.max_steps = int(cfg["max_steps"])
        self.fps = float(cfg["env_args"]["env_kwargs"].get("control_freq", 20))

    def _policy_obs(self, obs):
        missing = [k for k in self.keys if k not in obs]
        if missing:
            raise KeyError(f"the env's observation lacks {missing}; it has {sorted(obs)}")
        return obs_to_policy(obs, self.keys)

    def _stacked(self):
        return {k: np.stack([o[k] for o in self.hist]) for k in self.keys}  # (To, ...)

    def _frame(self, obs):
        return obs[f"{self.cfg['video_camera']}_image"]

    def reset(self, ep: Mapping[str, Any]):
        """Start episode `ep`: {"state": stored state} or {"seed": int}, and "video" / "trace": paths
        (optional)."""
        self.video = ep.get("video")
        # the video camera renders in recorded episodes only
        cams = self.policy_cams + ([self.cfg["video_camera"]] if self.video else [])
        self.env.set_cameras(bool(cams), list(dict.fromkeys(cams)))
        obs = self.env.reset_to(ep["state"]) if "state" in ep else self.env.reset(seed=int(ep["seed"]))
        self.frames = [self._frame(obs)] if self.video else []
        self.trace = None
        if ep.get("trace"):
            header = {k: ep[k] for k in ("index", "split", "seed", "demo") if k in ep}
            self.trace = EpisodeTrace(ep["trace"], header)
            self.trace.record(0, self.env)
        self.hist = deque([self._policy_obs(obs)] * self.n_obs, maxlen=self.n_obs)
        self.steps, self.reward, self.success = 0, 0.0, False
        return ("obs", self._stacked(), {"steps": 0, "done": False})

    def step(self, actions, want_obs: bool):
        """Execute `actions` ((n, action_dim)) until they run out or the episode ends."""
        done = False
        for a in np.asarray(actions, dtype=np.float64).reshape(-1, self.action_dim):
            obs, r, _, info = self.env.step(a)
            self.steps += 1
            self.reward = max(self.reward, float(r))
            self.success = self.success or bool(info["success"])
            self.hist.append(self._policy_obs(obs))
            if self.video:
                self.frames.append(self._frame(obs))
            if self.trace is not None:
                self.trace.record(self.steps, self.env, a, r)
            done = self.steps >= self.max_steps or (self.cfg["stop_on_success"] and self.success)
            if done:
                break
        info = {"steps": self.steps, "done": done}
        if not done:
            return ("obs" if want_obs else "ack", self._stacked() if want_obs else None, info)
        info.update(reward=self.reward, success=self.success, video=None,
                    trace=self.trace.write() if self.trace is not None else None)
        if self.video:
            frames = np.stack(self.frames)
            info["video"] = write_video(self.video, frames, fps=self.fps)
            write_still(still_path(self.video), frames)
            self.frames = []
        return ("done", None, info)

    def close(self):
        self.env.close()


# =========================================================================================== parent side
class WorkerFault(RuntimeError):
    """A worker died, did not answer in time, or replied with an error."""


class WorkerHandle:
    """The parent's end of one worker process."""

    def __init__(self, ctx, cfg: Mapping[str, Any]):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=worker_main, args=(child, cfg), daemon=True)
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

    def wait_ready(self, timeout: float) -> Dict[str, Any]:
        """Wait for the worker's env to be built; returns {"pid", "action_dim"}. A worker that cannot
        start is killed and a RuntimeError raised (nothing would run)."""
        try:
            return self.recv(timeout)[1]
        except WorkerFault as e:
            self.kill()
            raise RuntimeError(f"a rollout worker could not start: {e}") from None

    def kill(self, force: bool = False) -> None:
        """Stop the worker: ask it to close (unless force), then kill it if it is still alive."""
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

    @property
    def stopped(self) -> bool:
        return not self.proc.is_alive() and self.conn.closed


def mp_context():
    """forkserver where available: its server imports robosuite (and this package) once and forks each
    worker from that state, so a worker starts (or is replaced) without re-importing them; it never
    creates a GL context, so every worker makes its own. Elsewhere spawn. The modules are imported in
    list order: this one imports env_args, which filters robosuite's known import-time messages
    (robosuite_log) before robosuite is imported."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__, "dp_fast.sim.env", "robosuite"])
    return ctx


def start_worker(ctx, cfg: Mapping[str, Any]) -> WorkerHandle:
    """Start a worker process (single-threaded BLAS / OpenMP); it sends "ready" once its env is built."""
    with single_threaded_children():
        return WorkerHandle(ctx, cfg)
