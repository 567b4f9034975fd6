"""Control-rate timing of rollouts: pure arithmetic on ticks, no processes and no env.

At a control rate of `hz` the simulated robot executes one action per tick (1 / hz seconds). A policy
call that takes `latency` seconds is started on the observation of some tick t; its chunk of actions is
time-indexed (`chunk[j]` is meant for tick t + j) and becomes available `lag_ticks(latency, hz)` ticks
after the tick it was due at: 0 when the call takes at most one period.

Synchronous mode: the robot waits for each chunk. It holds (zero motion, the last gripper command) for
every tick of lag, the call is a deadline miss when lag > 0, and then the whole chunk runs.

Asynchronous mode: while the next call is computed, the robot executes what is left of the current
chunk (`ran_ahead` actions). When the new chunk arrives:
- the robot holds for the ticks by which the call outlasted those actions (a miss if any);
- the new chunk's actions for ticks already passed are skipped;
- the chunk is cut short so that `lag` of its actions are left to run during the following call
  (the lag just measured is the estimate of the next one).

`plan_chunk` decides these numbers for one chunk, `chunk_commands` turns them into the actions sent to
the env. Hold ticks count towards the episode's step limit.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import numpy as np

GRIPPER = -1  # index of the gripper command in an action (the last entry)


def lag_ticks(latency_s: float, hz: float) -> int:
    """Ticks a chunk arrives late when the call took `latency_s` at control rate `hz`:
    ceil(latency_s * hz) - 1, never negative (a call within one period is on time)."""
    return max(0, int(math.ceil(latency_s * hz - 1e-9)) - 1)


class ChunkPlan(NamedTuple):
    holds: int   # hold ticks executed before the chunk's actions
    late: bool   # the robot ran out of actions before the chunk arrived (a deadline miss)
    start: int   # first action of the chunk that runs now (earlier ones are for ticks already passed)
    end: int     # chunk[start:end] runs now; chunk[end:] is kept to run during the next call


def plan_chunk(n_actions: int, lag: int, ran_ahead: int, async_inference: bool, steps_left: int) -> ChunkPlan:
    """How a chunk of `n_actions` actions is executed.

    lag: `lag_ticks` of the call that produced it. ran_ahead: actions of the previous chunk the env ran
    while this call was computed (async mode; 0 otherwise or when none were left). steps_left: steps the
    episode may still take; holds beyond it are not executed (and not counted as miss ticks), but the
    call still counts as a miss.
    """
    if ran_ahead:
        holds = max(0, lag - ran_ahead)
        start = min(max(lag, ran_ahead), n_actions - 1)
    else:
        holds, start = lag, 0
    late = holds > 0
    holds = min(holds, max(0, steps_left))
    end = max(start + 1, n_actions - lag) if async_inference else n_actions
    return ChunkPlan(holds=holds, late=late, start=start, end=end)


def hold_actions(n: int, action_dim: int, gripper: float) -> np.ndarray:
    """n actions that keep the robot still (zero delta pose) with the gripper command unchanged."""
    hold = np.zeros((n, action_dim))
    hold[:, GRIPPER] = gripper
    return hold


def chunk_commands(chunk: np.ndarray, plan: ChunkPlan, gripper: float) -> Tuple[np.ndarray, np.ndarray]:
    """(actions to send now: the holds then chunk[start:end], actions kept for later: chunk[end:]).
    `gripper` is the last gripper command the env received (held during the holds)."""
    chunk = np.asarray(chunk, dtype=np.float64)
    now = np.concatenate([hold_actions(plan.holds, chunk.shape[1], gripper), chunk[plan.start:plan.end]])
    return now, chunk[plan.end:]
