"""run_rollouts: a scripted policy solves Lift through the runner; faults, control-rate mode, videos.

Policies here act on low-dim observations (no cameras: ~6 ms an env step), so the tests stay short;
videos render agentview for the recorded episodes only.
"""
import math
import os
import signal
import time

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="robosuite not installed (pip install 'dp-fast[sim]')")
h5py = pytest.importorskip("h5py")
torch = pytest.importorskip("torch")

from dp_fast.sim.env import make_env, make_env_args  # noqa: E402
from dp_fast.sim.experts import down_rotation, gripper_yaw, nearest_equivalent, rotvec, yaw_of  # noqa: E402
from dp_fast.sim import workers  # noqa: E402
from dp_fast.sim.episodes import VIDEO_MIN_SIZE, env_args_for  # noqa: E402
from dp_fast.sim.runner import run_rollouts  # noqa: E402
from dp_fast.sim.trace import failure_modes, read_trace  # noqa: E402
from dp_fast.sim.video import read_video  # noqa: E402

pytestmark = pytest.mark.sim

LOW_DIM = {"robot0_eef_pos": [3], "robot0_eef_quat": [4], "robot0_gripper_qpos": [2], "object": [10]}
# The eef site's frame in the hand body's frame (robot0_eef_quat is the hand body's orientation).
HAND_TO_SITE = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def quat_to_mat(q):
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


class ScriptedLiftPolicy:
    """The Lift expert's strategy as a stateless policy on low-dim observations (predict_action API):
    yaw-matched top grasp from above, close, lift. Each call returns a chunk repeating one action."""

    def __init__(self, n_obs_steps=2, n_action_steps=8, sleep_s=0.0, raise_on_call=None):
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        self.shape_meta = {"obs": {k: {"shape": s} for k, s in LOW_DIM.items()}, "action": {"shape": [7]}}
        self.sleep_s, self.raise_on_call = sleep_s, raise_on_call
        self.n_calls = 0
        self.first_obs = []  # cube positions of episode starts (history frames all equal)

    @staticmethod
    def act(eef, quat, grip, obj):
        cube = obj[:3]
        site = quat_to_mat(quat) @ HAND_TO_SITE
        yaw = nearest_equivalent(yaw_of(quat_to_mat(obj[3:7])), gripper_yaw(site), math.pi / 2)
        width = float(np.sum(np.abs(grip)))
        err_xy = np.linalg.norm(eef[:2] - cube[:2])
        near = err_xy < 0.012 and abs(eef[2] - cube[2]) < 0.012
        if cube[2] > 0.845 or (near and width < 0.05):
            target, g = eef + np.array([0, 0, 0.1]), 1.0     # holding it: lift
        elif near:
            target, g = cube, 1.0                              # at the cube: close
        elif err_xy < 0.01 and eef[2] > cube[2]:
            target, g = cube, -1.0                             # above it: descend
        else:
            target, g = cube + np.array([0, 0, 0.06]), -1.0   # approach
        a = np.zeros(7)
        d = (target - eef) / 0.05 * 0.5
        a[:3] = d * min(1.0, 0.8 / max(1e-9, float(np.max(np.abs(d)))))
        a[3:6] = np.clip(1.2 * rotvec(down_rotation(yaw) @ site.T) / 0.5, -1, 1)
        a[6] = g
        return a

    def predict_action(self, obs):
        self.n_calls += 1
        if self.raise_on_call == self.n_calls:
            raise RuntimeError("policy exploded")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        assert all(obs[k].shape[1] == self.n_obs_steps and obs[k].dtype == torch.float32 for k in LOW_DIM)
        B = obs["object"].shape[0]
        out = np.zeros((B, self.n_action_steps, 7), np.float32)
        for b in range(B):
            o = {k: obs[k][b].numpy().astype(np.float64) for k in LOW_DIM}
            if np.array_equal(o["object"][0], o["object"][-1]) and np.array_equal(o["robot0_eef_pos"][0],
                                                                                    o["robot0_eef_pos"][-1]):
                self.first_obs.append(o["object"][-1, :3])
            out[b] = self.act(*(o[k][-1] for k in LOW_DIM))
        return {"action": torch.from_numpy(out)}


@pytest.fixture(scope="module")
def lift_dataset(tmp_path_factory):
    """A robomimic-layout file with 2 demos holding only what train episodes need: env_args, states[0]
    (from seeded resets) and model_file; plus the cube positions they start from."""
    env = make_env("lift", render=False)
    path = tmp_path_factory.mktemp("runner") / "lift_states.hdf5"
    cubes = []
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = __import__("json").dumps(make_env_args("lift", render=False))
        for i in range(2):
            env.reset(seed=777 + i)
            st = env.get_state()
            cubes.append(env.reset_to(st)["object"][:3])
            g = data.create_group(f"demo_{i}")
            g.create_dataset("states", data=st["states"][None].repeat(3, 0))
            g.attrs["model_file"] = st["model"]
    env.close()
    return path, cubes


def test_scripted_policy_reaches_expert_success(lift_dataset, tmp_path):
    path, cubes = lift_dataset
    policy = ScriptedLiftPolicy()
    m = run_rollouts(policy, dataset=path, n_train=2, n_test=2, n_envs=2, max_steps=150, seed=100000,
                     video_dir=tmp_path / "videos", n_videos=1, progress=False)
    # the scripted expert solves Lift on every seed; through the runner so must this policy
    assert m["errors"] == []
    assert m["test/success_rate"] == 1.0 and m["test/mean_score"] == 1.0, m
    assert m["train/success_rate"] == 1.0 and m["train/mean_score"] == 1.0, m
    assert m["test/seeds"] == [100000, 100001] and m["train/demos"] == [0, 1]
    assert m["n_episodes"] == 4 and all(0 < n < 150 for n in m["test/lengths"] + m["train/lengths"])
    # train episodes start from the stored states
    for c in cubes:
        assert min(np.abs(c - o).max() for o in policy.first_obs) < 1e-6  # float32 obs
    for k in ("latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_max"):
        assert m[k] >= 0
    assert m["n_policy_calls"] >= 4 and 1 <= m["mean_batch"] <= 2 and "deadline_misses" not in m
    # one video per split, one frame per step plus the initial one
    assert len(m["video_paths"]) == 2
    assert {p.split("/")[-1].split("_")[0] for p in m["video_paths"]} == {"train", "test"}
    lengths = {"train": m["train/lengths"][0], "test": m["test/lengths"][0]}
    for p in m["video_paths"]:
        assert (tmp_path / "videos").exists() and __import__("os").path.getsize(p) > 1000
        frames = read_video(p)
        v = VIDEO_MIN_SIZE  # a low-dim policy: the video camera alone, at the video size
        assert frames.shape == (lengths[p.split("/")[-1].split("_")[0]] + 1, v, v, 3) and frames.std() > 5


def test_video_camera_renders_at_video_size_only_when_asked():
    """A 48 px wrist-camera policy: the env renders the wrist camera at 48 px every step and agentview
    at VIDEO_MIN_SIZE only while a video episode asks for it."""
    meta = {"robot0_eye_in_hand_image": {"shape": [3, 48, 48], "type": "rgb"}, "robot0_eef_pos": {"shape": [3]}}
    args = env_args_for(meta, "lift", None, None, video=True)
    kw = args["env_kwargs"]
    assert kw["camera_names"] == ["robot0_eye_in_hand", "agentview"]
    assert kw["camera_heights"] == [48, VIDEO_MIN_SIZE] and kw["camera_widths"] == [48, VIDEO_MIN_SIZE]
    assert env_args_for(meta, "lift", None, None, video=False)["env_kwargs"]["camera_names"] == ["robot0_eye_in_hand"]
    with make_env(args) as env:
        env.set_cameras(True, ["robot0_eye_in_hand"])
        obs = env.reset(seed=3)
        assert obs["robot0_eye_in_hand_image"].shape == (48, 48, 3) and "agentview_image" not in obs
        env.set_cameras(True)
        obs = env.get_observation()
        assert obs["agentview_image"].shape == (VIDEO_MIN_SIZE, VIDEO_MIN_SIZE, 3)
        assert obs["robot0_eye_in_hand_image"].shape == (48, 48, 3)
        with pytest.raises(ValueError, match="frontview"):
            env.set_cameras(True, ["frontview"])


class FaultyHandle(workers.WorkerHandle):
    """A worker handle that makes chosen episodes fail, from the parent side: at the k-th step command
    of episode i it crashes the worker (SIGKILL with the command unread), hangs it (SIGSTOP) or sends it
    actions it cannot parse (the env worker raises). The worker process itself runs unchanged code."""

    faults = {}  # episode index -> (kind, k)

    def send(self, msg):
        cmd, arg = msg
        if cmd == "reset":
            self.episode, self.n_steps = arg["index"], 0
        elif cmd == "step":
            kind, k = self.faults.get(self.episode, (None, None))
            self.n_steps += 1
            if self.n_steps - 1 == k:
                if kind == "raise":
                    msg = ("step", ("injected fault", arg[1]))
                else:
                    os.kill(self.proc.pid, signal.SIGSTOP)  # the worker cannot take the command
                    super().send(msg)
                    if kind == "crash":
                        os.kill(self.proc.pid, signal.SIGKILL)
                    return
        super().send(msg)


def test_faults_are_reported_and_workers_replaced(monkeypatch):
    monkeypatch.setattr(FaultyHandle, "faults", {0: ("crash", 1), 1: ("hang", 0), 2: ("raise", 0)})
    monkeypatch.setattr(workers, "WorkerHandle", FaultyHandle)
    t0 = time.perf_counter()
    m = run_rollouts(ScriptedLiftPolicy(), task="lift", n_test=4, n_envs=2, max_steps=16, timeout_s=3.0,
                     progress=False)
    assert time.perf_counter() - t0 < 60
    errs = {e["episode"]: e["error"] for e in m["errors"]}
    assert sorted(errs) == [0, 1, 2], m["errors"]
    assert "died" in errs[0] and "did not answer" in errs[1]
    assert "worker raised" in errs[2] and "injected fault" in errs[2]
    assert m["worker_restarts"] == 3
    assert m["test/scores"][:3] == [0.0, 0.0, 0.0] and m["test/lengths"][3] == 16  # the last one ran
    assert m["n_episodes"] == 4


def test_policy_exception_fails_its_batch_only():
    m = run_rollouts(ScriptedLiftPolicy(raise_on_call=2), task="lift", n_test=3, n_envs=1, max_steps=16,
                     warmup=False, progress=False)
    assert len(m["errors"]) == 1 and "policy exploded" in m["errors"][0]["error"]
    assert m["worker_restarts"] == 0 and m["test/lengths"][1:] == [16, 16]


def test_control_rate_counts_deadline_misses():
    # 0.22 s a call against 10 Hz: every chunk arrives >= 2 ticks late
    kw = dict(task="lift", n_test=1, n_envs=1, max_steps=40, control_hz=10, progress=False)
    sync = run_rollouts(ScriptedLiftPolicy(sleep_s=0.22), **kw)
    assert sync["n_policy_calls"] >= 2 and sync["deadline_misses"] == sync["n_policy_calls"]
    assert sync["deadline_miss_ticks"] >= 2 * sync["n_policy_calls"] and sync["deadline_miss_rate"] == 1.0
    assert sync["latency_ms_p50"] >= 220
    # async: the next chunk is computed while the rest of the current one runs: only the first misses
    asyn = run_rollouts(ScriptedLiftPolicy(sleep_s=0.22), async_inference=True, **kw)
    assert asyn["deadline_misses"] == 1 and asyn["n_policy_calls"] > sync["n_policy_calls"]
    fast = run_rollouts(ScriptedLiftPolicy(), **kw)
    assert fast["deadline_misses"] == 0 and fast["deadline_miss_ticks"] == 0
    with pytest.raises(ValueError, match="control_hz"):
        run_rollouts(ScriptedLiftPolicy(), task="lift", async_inference=True)


def test_action_steps_executes_the_head_of_each_chunk():
    kw = dict(task="lift", n_test=1, n_envs=1, max_steps=24, warmup=False, progress=False)
    whole, head = ScriptedLiftPolicy(), ScriptedLiftPolicy()
    m8 = run_rollouts(whole, **kw)
    m3 = run_rollouts(head, action_steps=3, **kw)
    assert m8["test/lengths"] == m3["test/lengths"] == [24]
    assert whole.n_calls == 3 and head.n_calls == 8 and m3["action_steps"] == 3 and "action_steps" not in m8
    with pytest.raises(ValueError, match="more than the 8 actions"):
        run_rollouts(ScriptedLiftPolicy(), action_steps=9, **kw)
    with pytest.raises(ValueError, match="action_steps must be an integer >= 1"):
        run_rollouts(ScriptedLiftPolicy(), action_steps=0, **kw)


def test_bad_policy_keys_fail_before_any_worker_starts():
    policy = ScriptedLiftPolicy()
    policy.shape_meta["obs"]["robot0_nose_pos"] = {"shape": [3]}
    with pytest.raises(ValueError, match="robot0_nose_pos"):
        run_rollouts(policy, task="lift", n_test=1, progress=False)
    with pytest.raises(ValueError, match="dataset"):
        run_rollouts(ScriptedLiftPolicy(), task="lift", n_train=1, progress=False)


def test_write_video_and_fallback(tmp_path, monkeypatch):
    from dp_fast.sim import video

    frames = np.random.default_rng(0).integers(0, 255, (5, 31, 40, 3), dtype=np.uint8)  # odd height
    p = video.write_video(tmp_path / "a.mp4", frames, fps=10)
    assert p.endswith("a.mp4") and read_video(p).shape == (5, 32, 40, 3)
    with pytest.raises(ValueError, match="uint8"):
        video.write_video(tmp_path / "b.mp4", frames.astype(np.float32))
    monkeypatch.setattr(video, "ffmpeg_exe", lambda: None)  # no encoder: raw frames in an npz
    p = video.write_video(tmp_path / "c.mp4", frames)
    assert p.endswith("c.frames.npz") and np.array_equal(read_video(p), frames)
    assert video.video_backend() == "npz"


class OpenHandLiftPolicy(ScriptedLiftPolicy):
    """The scripted Lift policy with the gripper never closing: it reaches the cube and cannot lift it."""

    @staticmethod
    def act(eef, quat, grip, obj):
        a = ScriptedLiftPolicy.act(eef, quat, grip, obj)
        a[6] = -1.0
        return a


def test_traces_record_every_step_and_classify_the_failures(tmp_path):
    ok = run_rollouts(ScriptedLiftPolicy(), task="lift", n_test=1, n_envs=1, max_steps=150, seed=100000,
                      trace_dir=tmp_path / "ok", progress=False)
    bad = run_rollouts(OpenHandLiftPolicy(), task="lift", n_test=1, n_envs=1, max_steps=60, seed=100000,
                       trace_dir=tmp_path / "bad", progress=False)
    assert ok["test/successes"] == [True] and bad["test/successes"] == [False]
    for m, d in ((ok, "ok"), (bad, "bad")):
        (path,) = m["test/traces"]
        assert path == str(tmp_path / d / "test_000_seed100000.jsonl")
        tr = read_trace(path)
        assert tr["header"] == {"index": 0, "split": "test", "seed": 100000}
        assert [s["step"] for s in tr["steps"]] == list(range(m["test/lengths"][0] + 1))
        assert all(len(s["action"]) == 7 for s in tr["steps"][1:])
    assert read_trace(ok["test/traces"][0])["steps"][-1]["reward"] == 1.0
    fm = failure_modes(zip(bad["test/traces"], bad["test/successes"]))
    (row,) = fm["episodes"]
    assert row["mode"] == "not_grasped" and row["first_reach"] is not None, row
    assert failure_modes(zip(ok["test/traces"], ok["test/successes"]))["episodes"] == []
