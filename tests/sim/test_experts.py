"""Scripted experts solve their tasks (no cameras: ~6 ms a step)."""
import numpy as np
import pytest

pytest.importorskip("robosuite", reason="robosuite not installed (pip install 'dp-fast[sim]')")

from dp_fast.sim.env import make_env  # noqa: E402
from dp_fast.sim.experts import make_expert, run_expert  # noqa: E402
from dp_fast.sim.tasks import expert_max_steps  # noqa: E402

pytestmark = pytest.mark.sim

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", params=["lift", "can", "square"])
def env(request):
    e = make_env(request.param, render=False)
    yield e
    e.close()


def _episode(env, seed, perturb=0.0):
    env.reset(seed=seed)
    env.reset_to(env.get_state())  # the path generate_demos takes
    expert = make_expert(env, seed=seed)
    return run_expert(env, expert, perturb=perturb)


def test_expert_solves_task(env):
    for seed in SEEDS:
        res = _episode(env, seed)
        assert res["success"], (env.task, seed, res["steps"])
        a = res["actions"]
        assert a.shape == (res["steps"], 7) and res["steps"] <= expert_max_steps(env.task)
        assert np.all(np.abs(a) <= 1.0)
        assert res["rewards"][-1] == 1.0


def test_expert_deterministic_and_varied(env):
    a = _episode(env, 5)["actions"]
    b = _episode(env, 5)["actions"]
    np.testing.assert_array_equal(a, b)
    c = _episode(env, 6)["actions"]
    assert a.shape != c.shape or not np.allclose(a, c)


def test_expert_recovers_from_perturbation(env):
    """Recovery data (perturb > 0): the expert still solves the task while pushed off its path, and
    its labels differ from what was executed only in translation."""
    solved = 0
    for seed in SEEDS:
        res = _episode(env, seed, perturb=0.3)
        solved += res["success"]
        diff = np.abs(res["actions"] - res["executed"])
        assert diff[:, :3].max() > 0.02 and diff[:, 3:].max() == 0.0
        assert np.all(np.abs(res["executed"]) <= 1.0)
    assert solved >= len(SEEDS) - 1, (env.task, solved)
    np.testing.assert_array_equal(_episode(env, 1)["actions"], _episode(env, 1)["executed"])
