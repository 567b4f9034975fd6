"""The tasks dp_fast simulates, in one table: robosuite env name and episode step limits.

    TASK_TABLE["square"].max_steps         # 400: a policy rollout's step limit
    rollout_max_steps("NutAssemblySquare") # the same, looked up by alias or robosuite env name

`max_steps` is the rollout limit the original diffusion_policy evaluates with: its robomimic task configs
(`config/task/{lift,can,square}_{image,lowdim}[_abs].yaml`) set the env runner's
`max_steps: ${eval:'500 if "${task.dataset_type}" == "mh" else 400'}`, i.e. 400 control steps (20 s at
20 Hz) for the proficient-human (ph) data all three tasks use here.

`expert_max_steps` is how long the scripted expert (`experts.run_expert`, the demo generator) may run
before an attempt counts as failed. Square's expert gets 500: its episodes usually take 140-200 steps,
but a slow one can run past 300 (329 steps among 12 seeds tried), and the longer limit keeps such attempts.
A square demo can therefore be longer than a rollout is allowed to be.

The action space is not in this table: every env reports its own (`SimEnv.action_dim`, 7 for the Panda's
delta OSC_POSE controller: 3 position, 3 rotation, 1 gripper), and the rollout code reads it from there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class Task:
    env_name: str          # robosuite environment
    max_steps: int         # rollout episode limit (the original's value for ph data)
    expert_max_steps: int  # the scripted expert's limit when generating demos


TASK_TABLE: Dict[str, Task] = {
    "lift": Task("Lift", max_steps=400, expert_max_steps=400),
    "can": Task("PickPlaceCan", max_steps=400, expert_max_steps=400),
    "square": Task("NutAssemblySquare", max_steps=400, expert_max_steps=500),
}
# alias -> robosuite env name
TASKS: Dict[str, str] = {alias: t.env_name for alias, t in TASK_TABLE.items()}

# limits for an env outside the table (a robosuite env name given directly)
FALLBACK_MAX_STEPS = 400
FALLBACK_EXPERT_MAX_STEPS = 500


def _lookup(task: str):
    key = task.lower()
    if key in TASK_TABLE:
        return TASK_TABLE[key]
    for t in TASK_TABLE.values():
        if t.env_name == task:
            return t
    return None


def rollout_max_steps(task: str) -> int:
    """Rollout step limit of a task alias or robosuite env name (FALLBACK_MAX_STEPS if not in the table)."""
    t = _lookup(task)
    return t.max_steps if t is not None else FALLBACK_MAX_STEPS


def expert_max_steps(task: str) -> int:
    """Scripted-expert step limit of a task alias or env name (FALLBACK_EXPERT_MAX_STEPS if unknown)."""
    t = _lookup(task)
    return t.expert_max_steps if t is not None else FALLBACK_EXPERT_MAX_STEPS
