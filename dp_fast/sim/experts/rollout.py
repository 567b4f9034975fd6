"""Rolling an expert out: `run_expert`, and the `Perturbation` that makes recovery data."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np

from ..env import SimEnv
from ..tasks import expert_max_steps
from .base import ScriptedExpert

# Phases in which `run_expert(..., perturb=...)` perturbs the executed action: reaching the object, where a
# learnt policy's errors start (every expert begins with _pick's approach / descend).
PERTURB_PHASES = ("approach", "descend")
PERTURB_RHO = 0.9  # AR(1) correlation per control step (~10 steps = 0.5 s)


class Perturbation:
    """Smooth zero-mean disturbance of the translation part of an action (DART-style recovery data).

    An AR(1) process per axis with stationary standard deviation `sigma` action units, active only while
    the expert is in PERTURB_PHASES and scaled by min(1, max(0.25, distance to the expert's current
    way-point / 4 cm)), so that the expert keeps its precision at the object. The process advances at
    every call, active or not. Deterministic given `seed`.
    """

    def __init__(self, sigma: float, seed: Optional[int]):
        if sigma < 0:
            raise ValueError(f"perturb sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)
        self.rng = np.random.default_rng(None if seed is None else [int(seed), 0xDA27])
        self.state = np.zeros(3)

    def __call__(self, expert: ScriptedExpert, a: np.ndarray) -> np.ndarray:
        innov = self.sigma * math.sqrt(1.0 - PERTURB_RHO ** 2) * self.rng.standard_normal(3)
        self.state = PERTURB_RHO * self.state + innov
        if expert.phase not in PERTURB_PHASES:
            return a
        dist = float(np.linalg.norm(expert.target - expert.env.eef_pos()))
        out = np.array(a, dtype=np.float64)
        out[:3] += self.state * min(1.0, max(0.25, dist / 0.04))
        return np.clip(out, -1.0, 1.0)


def run_expert(env: SimEnv, expert: ScriptedExpert, max_steps: Optional[int] = None,
               hold_steps: int = 5, record_obs: bool = False, perturb: float = 0.0) -> Dict[str, object]:
    """Roll `expert` out from env's current state (call env.reset/reset_to first).

    Stops `hold_steps` steps after the first success (the episode must still be a success then) or at
    max_steps (default: the task's `expert_max_steps` in tasks.TASK_TABLE). Returns {"actions": (T, A),
    "executed": (T, A), "success": bool, "steps": T, "first_success": step index or -1, "rewards": (T,),
    "obs": list of obs dicts (if record_obs)}, A = env.action_dim.

    With perturb > 0 the env executes the expert's action plus a `Perturbation(perturb, expert.seed)`
    while reaching the object, and "actions" holds the expert's own (unperturbed) action in each visited
    state, the label a policy should learn; "executed" is what was stepped (replaying it reproduces the
    episode). Without, the two are equal.
    """
    max_steps = expert_max_steps(env.task) if max_steps is None else int(max_steps)
    expert.reset()
    disturb = Perturbation(perturb, expert.seed) if perturb > 0 else None
    actions: List[np.ndarray] = []
    executed: List[np.ndarray] = []
    rewards: List[float] = []
    obs_list = []
    first = -1
    success = False
    for t in range(max_steps):
        a = expert.act()
        a_exec = a if disturb is None else disturb(expert, a)
        obs, r, _, info = env.step(a_exec)
        actions.append(a)
        executed.append(a_exec)
        rewards.append(r)
        if record_obs:
            obs_list.append(obs)
        success = bool(info["success"])
        if success and first < 0:
            first = t
        if first >= 0 and t - first >= hold_steps:
            break
    out = {
        "actions": np.asarray(actions, dtype=np.float64).reshape(-1, env.action_dim),
        "executed": np.asarray(executed, dtype=np.float64).reshape(-1, env.action_dim),
        "rewards": np.asarray(rewards, dtype=np.float64),
        "success": bool(success and first >= 0),
        "steps": len(actions),
        "first_success": first,
    }
    if record_obs:
        out["obs"] = obs_list
    return out
