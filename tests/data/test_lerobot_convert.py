"""`dp-fast convert`: a robomimic hdf5 file -> LeRobotDataset v3.0 copy, read back with the same reader
that passes lerobot's own fixtures (tests/data/test_lerobot.py); the copy's simulator settings; the
policy keys of the copy are the simulator's observation keys, so rollouts plan as for the hdf5 file."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV not installed (the `lerobot` extra: pip install -e '.[lerobot]')")
pytest.importorskip("pyarrow", reason="pyarrow not installed (the `lerobot` extra: pip install -e '.[lerobot]')")

from dp_fast.cli import main  # noqa: E402
from dp_fast.data import DatasetError, load_robomimic_hdf5  # noqa: E402
from dp_fast.data.convert import convert_robomimic  # noqa: E402
from dp_fast.data.formats import dataset_format, dataset_shape_meta, load_dataset, sim_start_states  # noqa: E402
from dp_fast.data.frames import with_image_size  # noqa: E402
from tests.data.make_hdf5 import ENV_ARGS, make_demos, write_robomimic  # noqa: E402

META = {"obs": {"agentview_image": {"shape": [3, 16, 24], "type": "rgb"},
                "robot0_eye_in_hand_image": {"shape": [3, 16, 24], "type": "rgb"},
                "robot0_eef_pos": {"shape": [3]}, "robot0_eef_quat": {"shape": [4]},
                "robot0_gripper_qpos": {"shape": [2]}, "object": {"shape": [5]}},
        "action": {"shape": [7]}}
LENGTHS = [5, 9, 4, 7]
FPS = 20  # ENV_ARGS has no control_freq: robosuite's default


def smooth(n, h, w, ep, cam):
    """Codec-friendly frames: a gradient and a moving square (random noise would not survive a video codec)."""
    y, x = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        img = np.stack([40 + 8 * x, 40 + 10 * y, np.full_like(x, 90 + 60 * cam)], -1)
        c = 3 + (t + ep) % (w - 8)
        img[4:10, c:c + 5] = (220, 60, 40)
        out[t] = img
    return out


@pytest.fixture(scope="module")
def hdf5(tmp_path_factory):
    d = tmp_path_factory.mktemp("convert")
    demos = make_demos(LENGTHS, META, seed=3)
    for e, demo in enumerate(demos):
        for cam, key in enumerate(("agentview_image", "robot0_eye_in_hand_image")):
            demo["obs"][key] = smooth(LENGTHS[e], 16, 24, e, cam)
    return write_robomimic(d / "demos.hdf5", demos)


def test_round_trip_exact_with_png_images(hdf5, tmp_path):
    dst = convert_robomimic(hdf5, tmp_path / "copy", images="image")
    assert dataset_format(dst) == "lerobot"
    meta = dataset_shape_meta(dst)
    # the file's keys are the feature names, valid as given: no mapping, same default keys as the hdf5
    assert meta == dataset_shape_meta(hdf5)
    assert all("dataset_key" not in m for m in meta["obs"].values())
    full = dataset_shape_meta(dst, list(META["obs"]))
    assert full == META
    ours, ref = load_dataset(dst, full), load_robomimic_hdf5(hdf5, full)
    assert ours.episode_ends.tolist() == ref.episode_ends.tolist() == np.cumsum(LENGTHS).tolist()
    for key in list(META["obs"]) + ["action"]:
        assert ours[key].dtype == ref[key].dtype
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=0, msg=key)
    np.testing.assert_array_equal(ours.frame_info["frame_index"], np.concatenate([np.arange(n) for n in LENGTHS]))
    np.testing.assert_array_equal(ours.frame_info["timestamp"], ours.frame_info["frame_index"].astype(np.float32) / FPS)
    assert ours.env_args == ENV_ARGS


def test_round_trip_video_several_files(hdf5, tmp_path):
    """AV1 videos (the default), a new data / video file every 3 episodes: an episode table spanning files."""
    dst = convert_robomimic(hdf5, tmp_path / "copy", episodes_per_file=3)
    files = sorted(p.name for p in (dst / "videos" / "agentview_image" / "chunk-000").iterdir())
    assert files == ["file-000.mp4", "file-001.mp4"]
    assert len(list((dst / "data" / "chunk-000").iterdir())) == 2
    info = json.loads((dst / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["features"]["agentview_image"]["dtype"] == "video"
    assert info["features"]["agentview_image"]["info"]["video.codec"] == "av1" and info["fps"] == FPS
    ours, ref = load_dataset(dst, META), load_robomimic_hdf5(hdf5, META)
    assert ours.episode_ends.tolist() == np.cumsum(LENGTHS).tolist()
    for key in ("robot0_eef_pos", "object", "action"):
        torch.testing.assert_close(ours[key], ref[key], rtol=0, atol=0)
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        diff = (ours[key].int() - ref[key].int()).abs().float()
        # AV1 at crf 30 on 16 x 24 frames (chroma at 8 x 12): ~5 grey levels on average
        assert diff.mean() < 8, f"{key}: mean codec error {diff.mean():.2f} grey levels"
        # frame order: each frame is nearer its own source frame than its neighbour's
        own = diff.mean(dim=(1, 2, 3))
        shifted = (ours[key][1:].int() - ref[key][:-1].int()).abs().float().mean(dim=(1, 2, 3))
        assert (own[1:] < shifted).all()


def test_sim_states_and_rollout_plan(hdf5, tmp_path):
    """The copy keeps env_args and each demo's first state; a policy on its keys plans as for the hdf5."""
    from dp_fast.sim.episodes import plan_rollouts

    dst = convert_robomimic(hdf5, tmp_path / "copy", images="image")
    env_args, eps = sim_start_states(dst, 2, 1)
    assert env_args == ENV_ARGS and [e["demo"] for e in eps] == [1, 2]
    assert eps[0]["state"]["model"] == "<mujoco/>"
    np.testing.assert_array_equal(eps[0]["state"]["states"], np.zeros(5))
    assert sim_start_states(hdf5, 2, 1)[0] == env_args
    with pytest.raises(DatasetError, match="has 4 episodes"):
        sim_start_states(dst, 3, 2)

    class Policy:  # what plan_rollouts reads of a policy
        def __init__(self, meta):
            self.config = type("C", (), {"shape_meta": meta})()

    # (the simulator renders square cameras: the policy's images resized to 16 x 16, as --image-size 16)
    plans = [plan_rollouts(Policy(with_image_size(dataset_shape_meta(d), 16)), task=None, dataset=d, n_train=1,
                           n_test=1, seed=5, train_start_idx=0, cameras=None, video_dir=None, n_videos=0, max_steps=10)
             for d in (dst, hdf5)]
    plan, ref = plans
    assert list(plan.obs_meta) == ["agentview_image", "robot0_eye_in_hand_image", "robot0_eef_pos",
                                   "robot0_eef_quat", "robot0_gripper_qpos"]
    assert plan.env_args == ref.env_args and list(plan.obs_meta) == list(ref.obs_meta)
    assert plan.worker_config(2, True) == ref.worker_config(2, True)


def test_cli_and_errors(hdf5, tmp_path, capsys):
    dst = tmp_path / "copy"
    assert main(["convert", str(hdf5), str(dst), "--images", "image", "--obs-keys", "robot0_eef_pos",
                 "agentview_image"]) == 0
    assert "4 episodes, 25 frames" in capsys.readouterr().out
    assert list(dataset_shape_meta(dst)["obs"]) == ["agentview_image", "robot0_eef_pos"]
    assert main(["convert", str(hdf5), str(dst)]) == 2  # not empty
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert", str(hdf5), str(tmp_path / "x"), "--obs-keys", "nope"]) == 2
    assert "obs keys ['nope'] not found" in capsys.readouterr().err
