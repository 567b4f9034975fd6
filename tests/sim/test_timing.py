"""Control-rate arithmetic of the rollouts (dp_fast.sim.timing) and the task table; no simulator needed."""
import numpy as np
import pytest

from dp_fast.sim.tasks import (FALLBACK_MAX_STEPS, TASK_TABLE, TASKS, expert_max_steps,
                               rollout_max_steps)
from dp_fast.sim.metrics import wilson_interval
from dp_fast.sim.timing import ChunkPlan, chunk_commands, hold_actions, lag_ticks, plan_chunk


@pytest.mark.parametrize("latency, hz, lag", [
    (0.0, 10, 0), (0.05, 10, 0), (0.1, 10, 0),   # within one period: on time
    (0.101, 10, 1), (0.2, 10, 1), (0.25, 10, 2),
    (0.3, 10, 2),                                 # exactly three periods (float noise tolerated)
    (0.05, 20, 0), (0.051, 20, 1), (1.0, 20, 19),
])
def test_lag_ticks(latency, hz, lag):
    assert lag_ticks(latency, hz) == lag


def test_sync_chunk_waits_then_runs_whole():
    assert plan_chunk(8, lag=0, ran_ahead=0, async_inference=False, steps_left=100) == ChunkPlan(0, False, 0, 8)
    # late by 2 ticks: 2 holds, a miss, then the whole chunk
    assert plan_chunk(8, lag=2, ran_ahead=0, async_inference=False, steps_left=100) == ChunkPlan(2, True, 0, 8)
    # the episode ends during the holds: only those that fit run, but the call still missed
    assert plan_chunk(8, lag=5, ran_ahead=0, async_inference=False, steps_left=3) == ChunkPlan(3, True, 0, 8)
    assert plan_chunk(8, lag=5, ran_ahead=0, async_inference=False, steps_left=0) == ChunkPlan(0, True, 0, 8)


def test_async_chunk_overlaps_the_next_call():
    # first call of an episode (nothing ran ahead): holds for the lag, keeps `lag` actions for the next call
    assert plan_chunk(8, lag=2, ran_ahead=0, async_inference=True, steps_left=100) == ChunkPlan(2, True, 0, 6)
    # the 2 kept actions covered the next call's lag of 2: no holds, skip the 2 ticks that passed
    assert plan_chunk(8, lag=2, ran_ahead=2, async_inference=True, steps_left=100) == ChunkPlan(0, False, 2, 6)
    # the call took longer than the kept actions: hold for the difference (a miss)
    assert plan_chunk(8, lag=3, ran_ahead=2, async_inference=True, steps_left=100) == ChunkPlan(1, True, 3, 5)
    # more actions ran ahead than the lag: skip as many as ran
    assert plan_chunk(8, lag=1, ran_ahead=4, async_inference=True, steps_left=100) == ChunkPlan(0, False, 4, 7)
    # a lag as long as the chunk: at least one action of the new chunk runs
    assert plan_chunk(4, lag=6, ran_ahead=4, async_inference=True, steps_left=100) == ChunkPlan(2, True, 3, 4)
    # a fast policy in async mode behaves as sync
    assert plan_chunk(8, lag=0, ran_ahead=0, async_inference=True, steps_left=100) == ChunkPlan(0, False, 0, 8)


def test_chunk_commands_hold_gripper_and_keep_the_rest():
    chunk = np.arange(8 * 7, dtype=np.float32).reshape(8, 7)
    now, later = chunk_commands(chunk, ChunkPlan(holds=2, late=True, start=1, end=5), gripper=0.5)
    assert now.dtype == np.float64 and now.shape == (2 + 4, 7)
    assert np.all(now[:2, :-1] == 0) and np.all(now[:2, -1] == 0.5)  # still, gripper unchanged
    np.testing.assert_array_equal(now[2:], chunk[1:5])
    np.testing.assert_array_equal(later, chunk[5:])
    assert hold_actions(0, 4, 1.0).shape == (0, 4)
    now, later = chunk_commands(chunk, ChunkPlan(0, False, 0, 8), gripper=-1.0)
    np.testing.assert_array_equal(now, chunk)
    assert later.shape == (0, 7)


def test_task_table():
    # the original diffusion_policy's env_runner max_steps for the ph datasets: 400 for all three
    assert {k: t.max_steps for k, t in TASK_TABLE.items()} == {"lift": 400, "can": 400, "square": 400}
    assert TASKS == {"lift": "Lift", "can": "PickPlaceCan", "square": "NutAssemblySquare"}
    assert rollout_max_steps("square") == rollout_max_steps("NutAssemblySquare") == 400
    assert rollout_max_steps("Lift") == 400 and rollout_max_steps("Door") == FALLBACK_MAX_STEPS
    assert expert_max_steps("square") == 500 and expert_max_steps("lift") == 400


def test_wilson_interval():
    """Known values (Wilson 1927 / standard tables): 95% interval of 8/10 is [0.490, 0.943]."""
    lo, hi = wilson_interval(8, 10)
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    assert wilson_interval(0, 20)[0] == 0.0 and 0.1 < wilson_interval(0, 20)[1] < 0.2
    assert wilson_interval(100, 100)[1] == 1.0 and wilson_interval(100, 100)[0] > 0.96
    assert wilson_interval(0, 0) == (0.0, 1.0)
