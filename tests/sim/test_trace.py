"""Per-step traces (dp_fast.sim.trace): the failure-mode classification on synthetic records, and the
files a traced rollout writes (with the scripted Lift policy of test_runner)."""
import json

import numpy as np
import pytest

from dp_fast.sim.trace import LIFT_M, MODES, REACH_M, EpisodeTrace, classify, failure_modes, read_trace


def _steps(eef, obj, close):
    """Records from per-step eef / object positions and close commands (step 0 has no action)."""
    out = []
    for i, (e, o, c) in enumerate(zip(eef, obj, close)):
        r = {"step": i, "eef": list(e), "obj": list(o), "grip": [0.04, -0.04], "reward": 0.0}
        if i:
            r["action"] = [0.0] * 6 + [1.0 if c else -1.0]
        out.append(r)
    return out


OBJ = np.array([0.1, 0.0, 0.82])


@pytest.mark.parametrize("mode", MODES)
def test_classify_each_mode(mode):
    n = 12
    obj = np.repeat(OBJ[None], n, 0)
    eef = np.repeat((OBJ + [0.0, 0.0, 0.2])[None], n, 0)
    close = np.zeros(n, bool)
    if mode != "not_reached":
        eef[4:] = OBJ + [0.0, 0.0, REACH_M / 2]      # at the object from step 4
    if mode not in ("not_reached", "not_grasped"):
        close[6:] = True                              # closes there from step 6
    if mode in ("lifted_dropped", "lifted_not_placed"):
        obj[7:9, 2] += 2 * LIFT_M                     # it rises
        eef[7:9, 2] += 2 * LIFT_M
        if mode == "lifted_not_placed":
            obj[9:, 2] += 2 * LIFT_M
            eef[9:, 2] += 2 * LIFT_M
    c = classify(_steps(eef, obj, close))
    assert c["mode"] == mode, c
    assert (c["first_reach"] is None) == (mode == "not_reached")
    assert (c["first_close_near"] is None) == (mode in ("not_reached", "not_grasped"))
    if mode not in ("not_reached", "not_grasped"):
        assert c["first_reach"] == 4 and c["first_close_near"] == 6
    if mode == "not_reached":
        assert c["min_dist_m"] == pytest.approx(0.2)


class _StillEnv:
    """The three SimEnv readings a trace records, held fixed."""
    def eef_pos(self):
        return OBJ + 0.2

    def gripper_qpos(self):
        return np.array([0.04, -0.04])

    def object_pos(self):
        return OBJ


def test_a_lifted_object_counts_as_lifted_however_far_the_hand():
    """A can held near its top: the hand stays > REACH_M from the can's centre while it rises."""
    n = 12
    obj = np.repeat(OBJ[None], n, 0)
    eef = np.repeat((OBJ + [0.0, 0.0, 2 * REACH_M])[None], n, 0)
    close = np.zeros(n, bool)
    close[5:] = True
    obj[6:9, 2] += 3 * LIFT_M
    eef[6:9, 2] += 3 * LIFT_M
    c = classify(_steps(eef, obj, close))
    assert c["mode"] == "lifted_dropped" and c["first_reach"] is None, c
    obj[6:, 2] = OBJ[2] + LIFT_M / 2                   # below the lift height: never lifted
    assert classify(_steps(eef, obj, close))["mode"] == "not_reached"


def test_trace_file_round_trip_and_failure_table(tmp_path):
    env = _StillEnv()
    t = EpisodeTrace(tmp_path / "a" / "test_000_seed5.jsonl", {"index": 0, "split": "test", "seed": 5})
    t.record(0, env)
    t.record(1, env, np.zeros(7), 0.0)
    path = t.write()
    tr = read_trace(path)
    assert tr["header"] == {"index": 0, "split": "test", "seed": 5}
    assert [s["step"] for s in tr["steps"]] == [0, 1] and "action" not in tr["steps"][0]
    assert tr["steps"][1]["obj"] == pytest.approx(list(OBJ))
    assert tr["steps"][1]["eef"] == pytest.approx(list(OBJ + 0.2))
    fm = failure_modes([(path, False), (path, True), (None, False)])
    assert fm["counts"]["not_reached"] == 1 and sum(fm["counts"].values()) == 1
    assert fm["episodes"][0]["seed"] == 5 and fm["episodes"][0]["trace"] == path


def test_empty_trace_is_refused(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("")
    with pytest.raises(ValueError, match="empty trace"):
        read_trace(p)
    with pytest.raises(ValueError, match="no records"):
        classify([])
