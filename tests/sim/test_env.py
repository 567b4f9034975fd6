"""robosuite env wrapper: observation layout, image flip, state save / restore (needs robosuite)."""
import json

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="robosuite not installed (pip install 'dp-fast[sim]')")

from dp_fast.sim.env import (POLICY_OBS_KEYS, TASKS, make_env, make_env_args,  # noqa: E402
                             obs_to_policy)

pytestmark = pytest.mark.sim

CAMERAS = ("agentview", "robot0_eye_in_hand")


@pytest.fixture(scope="module")
def lift_env():
    try:
        env = make_env("lift", seed=0)
    except Exception as e:  # no EGL / OSMesa
        pytest.skip(f"offscreen rendering unavailable: {type(e).__name__}: {e}")
    yield env
    env.close()


def test_env_args_layout():
    args = make_env_args("square")
    assert args["env_name"] == "NutAssemblySquare" and args["type"] == 1
    kw = args["env_kwargs"]
    assert kw["robots"] == ["Panda"] and kw["control_freq"] == 20 and kw["reward_shaping"] is False
    assert kw["camera_names"] == list(CAMERAS) and kw["camera_heights"] == kw["camera_widths"] == 84
    arm = kw["controller_configs"]["body_parts"]["right"]
    assert arm["type"] == "OSC_POSE" and arm["input_type"] == "delta"
    json.dumps(args)  # serialisable as stored in the hdf5 attrs
    assert {k: TASKS[k] for k in ("lift", "can", "square")} == {
        "lift": "Lift", "can": "PickPlaceCan", "square": "NutAssemblySquare"}


def test_obs_layout_and_dtypes(lift_env):
    obs = lift_env.reset(seed=3)
    for cam in CAMERAS:
        img = obs[f"{cam}_image"]
        assert img.shape == (84, 84, 3) and img.dtype == np.uint8 and img.flags["C_CONTIGUOUS"]
        assert img.std() > 1.0  # rendered something
    shapes = {"robot0_eef_pos": (3,), "robot0_eef_quat": (4,), "robot0_gripper_qpos": (2,),
              "robot0_joint_pos": (7,), "object": (10,)}
    for k, shape in shapes.items():
        assert obs[k].shape == shape and obs[k].dtype == np.float64, k
    assert abs(np.linalg.norm(obs["robot0_eef_quat"]) - 1) < 1e-6
    assert lift_env.action_dim == 7
    np.testing.assert_array_equal(lift_env.action_low, -1)
    np.testing.assert_array_equal(lift_env.action_high, 1)


def test_images_are_flipped_robosuite_frames(lift_env):
    lift_env.reset(seed=4)
    obs, *_ = lift_env.step(np.array([0.3, -0.2, 0.1, 0, 0, 0.2, -1.0]))
    sim = lift_env.sim
    sim._render_context_offscreen.gl_ctx.make_current()
    for cam in CAMERAS:
        raw = sim.render(84, 84, camera_name=cam)  # robosuite / OpenGL: bottom row first
        np.testing.assert_array_equal(obs[f"{cam}_image"], raw[::-1])
        assert not np.array_equal(raw, raw[::-1])


def test_obs_to_policy(lift_env):
    obs = lift_env.reset(seed=5)
    p = obs_to_policy(obs)
    assert list(p) == list(POLICY_OBS_KEYS)
    assert p["agentview_image"].shape == (3, 84, 84) and p["agentview_image"].dtype == np.uint8
    np.testing.assert_array_equal(p["agentview_image"], obs["agentview_image"].transpose(2, 0, 1))
    assert p["robot0_eef_pos"].dtype == np.float32
    f = obs_to_policy({"agentview_image": np.stack([obs["agentview_image"]] * 2)}, keys=None,
                      image_dtype="float32")
    assert f["agentview_image"].shape == (2, 3, 84, 84) and f["agentview_image"].max() <= 1.0


def test_reset_to_reproduces_observation(lift_env):
    lift_env.reset(seed=6)
    rng = np.random.default_rng(0)
    for _ in range(5):
        lift_env.step(rng.uniform(-1, 1, 7))
    state = lift_env.get_state()
    assert state["states"].dtype == np.float64 and "<mujoco" in state["model"][:200]
    obs = lift_env.get_observation()
    lift_env.reset(seed=7)  # somewhere else
    obs2 = lift_env.reset_to(state)
    assert obs.keys() == obs2.keys()
    for k in obs:
        np.testing.assert_array_equal(obs2[k], obs[k], err_msg=k)
    np.testing.assert_array_equal(lift_env.get_state()["states"], state["states"])


def test_seeded_reset_and_cameras_off(lift_env):
    a = lift_env.reset(seed=11)
    b = lift_env.reset(seed=11)
    c = lift_env.reset(seed=12)
    np.testing.assert_array_equal(a["object"], b["object"])
    assert not np.array_equal(a["object"], c["object"])
    lift_env.set_cameras(False)
    try:
        obs, reward, done, info = lift_env.step(np.zeros(7))
        assert not any(k.endswith("_image") for k in obs)
        assert reward == 0.0 and done is False and info["success"] is False
    finally:
        lift_env.set_cameras(True)
    assert "agentview_image" in lift_env.reset(seed=11)


@pytest.mark.parametrize("task", ["can", "square"])
def test_build_from_env_args_json(task):
    env = make_env(task, render=False, seed=1)
    try:
        env2 = make_env(json.dumps(env.env_args), render=False, seed=1)
        try:
            assert env2.env_name == TASKS[task]
            assert env2.model_xml() == env.model_xml()  # same model whatever the episode seed
            o1, o2 = env.reset(seed=3), env2.reset(seed=3)
            np.testing.assert_array_equal(o1["object"], o2["object"])
            assert not env.is_success()
        finally:
            env2.close()
    finally:
        env.close()


@pytest.mark.parametrize("task", ["lift", "can", "square"])
def test_object_pos_is_the_grasp_point(task):
    """The object's position in robosuite's object-state sits at a task-dependent offset (lift:
    cube_pos first; can / square: the object-to-eef pose first, then Can_pos / SquareNut_pos); the
    square's grasp point is its handle, off the nut's centre along the nut's x axis."""
    env = make_env(task, render=False, seed=1)
    try:
        obj = env.reset(seed=4)["object"]
        pos = env.object_pos()
        if task == "lift":
            np.testing.assert_allclose(pos, obj[:3], atol=1e-6)
        elif task == "can":
            np.testing.assert_allclose(pos, obj[7:10], atol=1e-6)
        else:
            e = env.env
            centre, rot = env.body_pose(e.nuts[e.nut_id].root_body)
            np.testing.assert_allclose(centre, obj[7:10], atol=1e-6)
            off = rot.T @ (pos - centre)          # the handle in the nut's frame
            assert 0.04 < off[0] < 0.07 and abs(off[1]) < 1e-3, off
    finally:
        env.close()
