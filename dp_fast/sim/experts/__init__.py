"""Scripted experts for Lift, PickPlaceCan and NutAssemblySquare (Panda, delta OSC_POSE actions).

Each expert is a small state machine over way-points computed from privileged simulator state (object
and end-effector poses), tracked with a proportional controller in the delta-OSC action space
(`base.ScriptedExpert.servo`). Given the simulator state and its seed an expert is deterministic; the
seed draws the episode's style (speeds, heights, grasp and placement offsets, short pauses) so that
demonstrations vary across seeds. All actions lie in [-1, 1].

    expert = make_expert(env, seed=7)      # after env.reset(seed=7)
    res = run_expert(env, expert, perturb=0.3)

Modules: `frames` (rotation helpers), `base` (servo, pick phases, grasp retries), `lift`, `can`,
`square` (the tasks' phases), `rollout` (`run_expert` and the recovery-data `Perturbation`).
"""
from __future__ import annotations

from typing import Optional

from ..env import SimEnv
from .base import CLOSE, OPEN, POS_UNIT, ROT_UNIT, Clearance, ScriptedExpert
from .can import CanExpert
from .frames import down_rotation, gripper_yaw, nearest_equivalent, rotvec, rz, wrap, yaw_of
from .lift import LiftExpert
from .rollout import PERTURB_PHASES, PERTURB_RHO, Perturbation, run_expert
from .square import SquareExpert

EXPERTS = {"lift": LiftExpert, "can": CanExpert, "square": SquareExpert}


def make_expert(env: SimEnv, seed: Optional[int] = None) -> ScriptedExpert:
    """The scripted expert for env's task; call `expert.reset()` after each env reset (`run_expert`
    does)."""
    try:
        cls = EXPERTS[env.task]
    except KeyError:
        raise ValueError(f"no scripted expert for task {env.task!r}") from None
    return cls(env, seed=seed)


__all__ = [
    "CLOSE", "OPEN", "POS_UNIT", "ROT_UNIT", "Clearance", "ScriptedExpert", "LiftExpert", "CanExpert",
    "SquareExpert", "EXPERTS", "make_expert", "run_expert", "Perturbation", "PERTURB_PHASES", "PERTURB_RHO",
    "down_rotation", "gripper_yaw", "nearest_equivalent", "rotvec", "rz", "wrap", "yaw_of",
]
