"""RobomimicImageDataset: batches == the original's per-sample __getitem__, split, normalizer."""
import numpy as np
import pytest
import torch

from dp_fast.config import PolicyConfig
from dp_fast.data import RobomimicImageDataset
from tests.data.make_hdf5 import SMALL_META, concat_hwc, make_demos, meta_copy, write_robomimic, write_small
from tests.data.original_ref import OriginalStyleDataset

RGB, LOW = ["agentview_image"], ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "small.hdf5"
    lengths = [5, 1, 9, 3, 12, 7, 2, 10, 4, 6]
    demos = write_small(path, lengths, seed=3)
    return path, demos, lengths


def reference_dataset(demos, lengths, horizon, to, ta, mask):
    data = {k: concat_hwc(demos, k) for k in ["action"] + RGB + LOW}
    return OriginalStyleDataset(data, np.cumsum(lengths), RGB, LOW, horizon, to, ta, episode_mask=mask)


@pytest.mark.parametrize("horizon,to,ta", [(10, 2, 8), (4, 2, 2), (6, 3, 1), (1, 1, 1)])
def test_batches_equal_original_getitem(small, horizon, to, ta):
    path, demos, lengths = small
    ds = RobomimicImageDataset(path, SMALL_META, horizon, to, ta, val_ratio=0.2, seed=42)
    for part in (ds, ds.get_validation_dataset()):
        ref = reference_dataset(demos, lengths, horizon, to, ta, part.train_mask)
        assert len(part) == len(ref) > 0
        idx = torch.randperm(len(part), generator=torch.Generator().manual_seed(0))
        batch = part.get_batch(idx)
        assert batch["action"].shape == (len(idx), horizon, 7) and batch["action"].dtype == torch.float32
        img = batch["obs"]["agentview_image"]
        assert img.shape == (len(idx), to, 3, 8, 6) and img.dtype == torch.uint8
        assert list(batch["obs"]) == list(SMALL_META["obs"])
        for j, i in enumerate(idx.tolist()):
            want = ref[i]
            torch.testing.assert_close(batch["action"][j], want["action"], rtol=0, atol=0)
            torch.testing.assert_close(img[j].float() / 255.0, want["obs"]["agentview_image"], rtol=0, atol=0)
            for k in LOW:
                assert batch["obs"][k].shape == (len(idx), to, *SMALL_META["obs"][k]["shape"])
                torch.testing.assert_close(batch["obs"][k][j], want["obs"][k], rtol=0, atol=0)


def test_hand_case_through_dataset(tmp_path):
    # one episode of length 3, horizon 4, To 2, Ta 2: windows are frames [0,0,1,2] and [0,1,2,2]
    path = tmp_path / "one.hdf5"
    demos = make_demos([3, 4])
    for d in demos:
        d["actions"][:] = np.arange(len(d["actions"]))[:, None]
        d["obs"]["robot0_eef_pos"][:] = 10 + np.arange(len(d["actions"]))[:, None]
    write_robomimic(path, demos)
    ds = RobomimicImageDataset(path, SMALL_META, 4, 2, 2, val_ratio=0.5, seed=0)
    val = ds.get_validation_dataset()
    one = ds if ds.train_mask.tolist() == [True, False] else val
    b = one.get_batch([0, 1])
    assert b["action"][:, :, 0].tolist() == [[0, 0, 1, 2], [0, 1, 2, 2]]
    assert b["obs"]["robot0_eef_pos"][:, :, 0].tolist() == [[10, 10], [10, 11]]
    assert one[1]["action"][:, 0].tolist() == [0, 1, 2, 2]


def test_split_and_max_train_episodes(small):
    path, demos, lengths = small
    ds = RobomimicImageDataset(path, SMALL_META, 4, 2, 2, val_ratio=0.2, seed=42)
    # hand-checked: n_val = round(10 * 0.2) = 2, default_rng(42).choice(10, 2) = [0, 7]
    assert np.nonzero(ds.val_mask)[0].tolist() == [0, 7]
    assert np.nonzero(ds.train_mask)[0].tolist() == [1, 2, 3, 4, 5, 6, 8, 9]
    val = ds.get_validation_dataset()
    assert np.nonzero(val.train_mask)[0].tolist() == [0, 7]
    assert val.replay_buffer is ds.replay_buffer
    n_windows = lambda eps: sum(max(lengths[e] - 4 + 1 + 1 + 1, 0) for e in eps)  # noqa: E731
    assert len(ds) == n_windows([1, 2, 3, 4, 5, 6, 8, 9]) and len(val) == n_windows([0, 7])

    sub = RobomimicImageDataset(path, SMALL_META, 4, 2, 2, val_ratio=0.2, seed=42, max_train_episodes=5,
                                buffer=ds.replay_buffer)
    # default_rng(42).choice(8, 5) = [3, 6, 5, 0, 7] over train episodes [1..6, 8, 9] -> [4, 8, 6, 1, 9]
    assert np.nonzero(sub.train_mask)[0].tolist() == [1, 4, 6, 8, 9]
    # as in the original, validation is the complement of the training set
    assert np.nonzero(sub.get_validation_dataset().train_mask)[0].tolist() == [0, 2, 3, 5, 7]
    assert len(sub) == n_windows([1, 4, 6, 8, 9])


def test_normalizer_values(tmp_path):
    meta = meta_copy()
    meta["obs"]["object"] = {"shape": [2]}
    demos = make_demos([4, 6], meta, seed=1)
    for i, d in enumerate(demos):
        n = len(d["actions"])
        t = np.linspace(0, 1, n) if i == 0 else np.linspace(0, 1, n) ** 2
        d["obs"]["robot0_eef_pos"] = np.stack([-2 + 4 * t, np.full(n, 0.3), 1 + 2 * t], 1)  # [-2,2], const, [1,3]
        d["obs"]["robot0_gripper_qpos"] = np.stack([0.5 * t, -t], 1)                       # [0,.5], [-1,0]
        d["obs"]["object"] = np.stack([10 * t, np.full(n, 5.0)], 1)                         # [0,10], const
    path = tmp_path / "norm.hdf5"
    write_robomimic(path, demos)
    ds = RobomimicImageDataset(path, meta, 4, 2, 2)
    norm = ds.get_normalizer()
    p = lambda k, f: norm.params_dict[k][f].tolist()  # noqa: E731
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)  # noqa: E731
    close(p("robot0_eef_pos", "scale"), [0.5, 1.0, 1.0])
    close(p("robot0_eef_pos", "offset"), [0.0, -0.3, -2.0])  # near-constant dim centred: offset 0 - min
    close(p("robot0_gripper_qpos", "scale"), [4.0, 2.0])
    close(p("robot0_gripper_qpos", "offset"), [-1.0, 1.0])
    close(p("object", "scale"), [0.2, 1.0])                   # other low-dim keys: limits
    close(p("object", "offset"), [-1.0, -5.0])
    assert p("robot0_eef_quat", "scale") == [1.0] * 4 and p("robot0_eef_quat", "offset") == [0.0] * 4
    assert p("action", "scale") == [1.0] * 7 and p("action", "offset") == [0.0] * 7  # delta actions: identity
    assert p("agentview_image", "scale") == [2.0] and p("agentview_image", "offset") == [-1.0]
    acts = concat_hwc(demos, "action")
    stats = norm.params_dict["action"]["input_stats"]
    close(stats["min"].tolist(), acts.min(0))
    close(stats["max"].tolist(), acts.max(0))
    close(stats["mean"].tolist(), acts.mean(0))
    close(stats["std"].tolist(), acts.std(0))
    quat = concat_hwc(demos, "robot0_eef_quat")
    close(norm.params_dict["robot0_eef_quat"]["input_stats"]["max"].tolist(), quat.max(0))
    # limits for actions on request: every dimension maps onto [-1, 1]
    lim = ds.get_normalizer(action_norm="limits")
    y = lim.normalize_key("action", ds.get_all_actions())
    close(y.min(0).values.tolist(), [-1.0] * 7)
    close(y.max(0).values.tolist(), [1.0] * 7)
    np.testing.assert_array_equal(ds.get_all_actions().numpy(), acts)
    with pytest.raises(ValueError, match="action_norm"):
        ds.get_normalizer(action_norm="gaussian")


def test_from_policy_config_and_arg_checks(small):
    path, _, _ = small
    cfg = PolicyConfig(shape_meta=meta_copy(), horizon=6, n_obs_steps=2, n_action_steps=4)
    ds = RobomimicImageDataset.from_policy_config(path, cfg, val_ratio=0.0)
    assert (ds.horizon, ds.pad_before, ds.pad_after) == (6, 1, 3)
    assert not ds.val_mask.any() and len(ds.get_validation_dataset()) == 0
    b = ds.get_batch(torch.arange(3))
    assert b["obs"]["robot0_eef_pos"].shape == (3, 2, 3) and b["action"].shape == (3, 6, 7)
    with pytest.raises(ValueError, match="n_obs_steps"):
        RobomimicImageDataset(path, SMALL_META, 2, 3, 1, buffer=ds.replay_buffer)


@pytest.mark.gpu
def test_gpu_resident_batches_equal_cpu(small):
    path, _, _ = small
    cpu = RobomimicImageDataset(path, SMALL_META, 10, 2, 8, val_ratio=0.2)
    gpu = RobomimicImageDataset(path, SMALL_META, 10, 2, 8, val_ratio=0.2, device="cuda")
    assert gpu.replay_buffer["agentview_image"].is_cuda and gpu.sampler.frames.is_cuda
    idx = torch.randperm(len(cpu))[:16]
    for i in (idx, idx.cuda()):
        a, b = cpu.get_batch(idx), gpu.get_batch(i)
        assert b["action"].is_cuda
        torch.testing.assert_close(b["action"].cpu(), a["action"], rtol=0, atol=0)
        for k in a["obs"]:
            torch.testing.assert_close(b["obs"][k].cpu(), a["obs"][k], rtol=0, atol=0)
    norm_c, norm_g = cpu.get_normalizer(), gpu.get_normalizer()
    for k in norm_c.keys():
        torch.testing.assert_close(norm_g.params_dict[k]["scale"], norm_c.params_dict[k]["scale"])
