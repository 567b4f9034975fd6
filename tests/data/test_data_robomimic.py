"""Robomimic hdf5 -> replay buffer: layout, numeric demo order, and errors on bad files."""
import h5py
import numpy as np
import pytest
import torch

from dp_fast.data import DatasetError, load_robomimic_hdf5, sorted_demo_names
from tests.data.make_hdf5 import ENV_ARGS, SMALL_META, concat_hwc, make_demos, meta_copy, write_robomimic, write_small


def test_buffer_layout(tmp_path):
    path = tmp_path / "d.hdf5"
    demos = write_small(path, [4, 6, 3], masks={"train": ["demo_0", "demo_2"], "valid": ["demo_1"]})
    buf = load_robomimic_hdf5(path, SMALL_META)
    assert buf.episode_ends.tolist() == [4, 10, 13] and buf.n_episodes == 3 and buf.n_steps == 13
    assert buf.episode_lengths.tolist() == [4, 6, 3]
    assert buf.demo_names == ["demo_0", "demo_1", "demo_2"]
    assert set(buf.keys()) == {"action", "agentview_image", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"}
    assert buf["action"].dtype == torch.float32 and buf["action"].shape == (13, 7)
    np.testing.assert_array_equal(buf["action"].numpy(), concat_hwc(demos, "action"))
    np.testing.assert_array_equal(buf["robot0_eef_quat"].numpy(), concat_hwc(demos, "robot0_eef_quat"))
    img = buf["agentview_image"]
    assert img.dtype == torch.uint8 and img.shape == (13, 3, 8, 6) and img.is_contiguous()
    # CHW in the buffer == HWC in the file, no flip
    np.testing.assert_array_equal(img.permute(0, 2, 3, 1).numpy(), concat_hwc(demos, "agentview_image"))
    assert buf.env_args == ENV_ARGS
    assert buf.masks == {"train": ["demo_0", "demo_2"], "valid": ["demo_1"]}
    # only the keys in shape_meta are read
    meta = meta_copy()
    del meta["obs"]["robot0_eef_quat"]
    assert "robot0_eef_quat" not in load_robomimic_hdf5(path, meta).keys()


def test_numeric_demo_order(tmp_path):
    lengths = list(range(2, 13))  # demo_i has length i + 2: the order is visible in episode_ends
    demos = make_demos(lengths)
    path = tmp_path / "d.hdf5"
    write_robomimic(path, demos)
    with h5py.File(path) as f:
        assert list(f["data"].keys())[:3] == ["demo_0", "demo_1", "demo_10"]  # hdf5's own order is lexicographic
    buf = load_robomimic_hdf5(path, SMALL_META)
    assert buf.demo_names == [f"demo_{i}" for i in range(11)]
    assert buf.episode_lengths.tolist() == lengths
    np.testing.assert_array_equal(buf["action"].numpy(), concat_hwc(demos, "action"))
    # gaps are allowed, order stays numeric
    write_robomimic(path, demos[:3], names=["demo_10", "demo_2", "demo_7"])
    assert load_robomimic_hdf5(path, SMALL_META).demo_names == ["demo_2", "demo_7", "demo_10"]
    assert sorted_demo_names(["demo_3", "other", "demo_1"]) == ["demo_1", "demo_3"]
    with pytest.raises(DatasetError, match="same index 1"):
        sorted_demo_names(["demo_1", "demo_01"])


def _corrupt(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


def _replace(f, name, arr):
    del f[name]
    f.create_dataset(name, data=arr)


BAD_CASES = {
    "missing_key": (lambda f: f["data/demo_1/obs"].__delitem__("robot0_eef_quat"),
                    ["demo_1", "missing obs key 'robot0_eef_quat'", "(4,)"]),
    "missing_actions": (lambda f: f["data/demo_0"].__delitem__("actions"), ["demo_0", "missing actions"]),
    "wrong_lowdim_shape": (lambda f: _replace(f, "data/demo_2/obs/robot0_eef_pos", np.zeros((5, 4))),
                           ["demo_2/obs/robot0_eef_pos", "expected shape (N,) + (3,)", "found (5, 4)"]),
    "wrong_image_shape": (lambda f: _replace(f, "data/demo_0/obs/agentview_image", np.zeros((4, 6, 8, 3), np.uint8)),
                          ["demo_0/obs/agentview_image", "(8, 6, 3)", "H, W, C", "found (4, 6, 8, 3)"]),
    "wrong_image_dtype": (lambda f: _replace(f, "data/demo_0/obs/agentview_image", np.zeros((4, 8, 6, 3), np.float32)),
                          ["demo_0/obs/agentview_image", "uint8", "float32"]),
    "wrong_action_dim": (lambda f: _replace(f, "data/demo_1/actions", np.zeros((6, 10))),
                         ["demo_1/actions", "(7,)", "found (6, 10)"]),
    "mismatched_length": (lambda f: _replace(f, "data/demo_1/obs/robot0_gripper_qpos", np.zeros((5, 2))),
                          ["demo_1/obs/robot0_gripper_qpos", "length mismatch", "expected 6", "found 5"]),
    "empty_demo": (lambda f: [_replace(f, f"data/demo_2/{k}", np.zeros((0,) + f[f"data/demo_2/{k}"].shape[1:],
                                                                      f[f"data/demo_2/{k}"].dtype))
                              for k in ["actions"] + [f"obs/{o}" for o in SMALL_META["obs"]]],
                   ["demo_2", "empty demo"]),
    "no_demos": (lambda f: [f["data"].__delitem__(n) for n in list(f["data"].keys())], ["holds no demo_<i>"]),
    "no_data_group": (lambda f: f.__delitem__("data"), ["no 'data' group"]),
    "bad_env_args": (lambda f: f["data"].attrs.__setitem__("env_args", "{not json"), ["env_args", "JSON"]),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_files(tmp_path, case):
    path = tmp_path / "bad.hdf5"
    write_small(path, [4, 6, 5])
    fn, fragments = BAD_CASES[case]
    _corrupt(path, fn)
    with pytest.raises(DatasetError) as e:
        load_robomimic_hdf5(path, SMALL_META)
    msg = str(e.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, (frag, msg)


def test_not_hdf5_and_missing_file(tmp_path):
    p = tmp_path / "notes.hdf5"
    p.write_text("not an hdf5 file\n")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        load_robomimic_hdf5(p, SMALL_META)
    with pytest.raises(DatasetError, match="no such file"):
        load_robomimic_hdf5(tmp_path / "absent.hdf5", SMALL_META)
    assert issubclass(DatasetError, ValueError)


def test_bad_shape_meta(tmp_path):
    path = tmp_path / "d.hdf5"
    write_small(path, [3])
    meta = meta_copy()
    meta["obs"]["agentview_image"]["shape"] = [8, 6]
    with pytest.raises(DatasetError, match=r"agentview_image.*\[C, H, W\]"):
        load_robomimic_hdf5(path, meta)
