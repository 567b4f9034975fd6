"""LeRobotDataset v3.0 reader against the fixtures written by lerobot's own writer (lerobot 0.4.4):
state / action exactly as lerobot reads them, frames within one grey level of lerobot's decoded frames,
episode boundaries, frame order and timestamps, for every fixture folder; names mapped for the policy."""
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="PyAV not installed (the `lerobot` extra: pip install -e '.[lerobot]')")
pytest.importorskip("pyarrow", reason="pyarrow not installed (the `lerobot` extra: pip install -e '.[lerobot]')")

from dp_fast import load_policy  # noqa: E402
from dp_fast.config import PolicyConfig  # noqa: E402
from dp_fast.data import DatasetError, RobomimicImageDataset  # noqa: E402
from dp_fast.data.formats import dataset_format, dataset_shape_meta, load_dataset  # noqa: E402
from dp_fast.data.frames import resize_frames, with_image_size  # noqa: E402
from dp_fast.data.lerobot_meta import policy_keys  # noqa: E402
from dp_fast.policy import DiffusionPolicy, ObsError  # noqa: E402
from tests.fixtures_path import fixtures_dir  # noqa: E402

FOLDERS = ["video_av1", "video_h264", "images", "video_multifile"]
CAMS = {"agentview": "observation.images.agentview", "wrist": "observation.images.wrist"}


def root(name):
    d = fixtures_dir() / "lerobot_v3" / name
    if not d.is_dir():
        pytest.skip(f"{d} not found")
    return d


@pytest.fixture(scope="module")
def loaded():
    """{folder: (shape_meta, buffer, truth)}, each folder read once."""
    cache = {}

    def get(name):
        if name not in cache:
            meta = dataset_shape_meta(root(name))
            cache[name] = (meta, load_dataset(root(name), meta), dict(np.load(root(name).parent / f"{name}_truth.npz")))
        return cache[name]
    return get


def chw_to_hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 2, 3, 1).numpy()


def test_shape_meta_maps_dotted_names():
    meta = dataset_shape_meta(root("video_av1"))
    assert dataset_format(root("video_av1")) == "lerobot"
    rgb = {"shape": [3, 84, 84], "type": "rgb"}
    assert meta == {"obs": {
        "observation_images_agentview": dict(rgb, dataset_key="observation.images.agentview"),
        "observation_images_wrist": dict(rgb, dataset_key="observation.images.wrist"),
        "observation_state": {"shape": [9], "dataset_key": "observation.state"}},
        "action": {"shape": [7]}}
    # obs_keys by dataset name or by policy key, in the order given
    only = dataset_shape_meta(root("images"), ["observation.state", "observation_images_wrist"])
    assert list(only["obs"]) == ["observation_state", "observation_images_wrist"]
    with pytest.raises(DatasetError, match="'timestamp' is not a usable feature"):
        dataset_shape_meta(root("images"), ["timestamp"])


def test_policy_keys_reversible_and_distinct():
    keys = policy_keys(["a.b", "a_b", "c", "x.y.z", "action.prev"])
    assert keys["a_b"] == "a_b" and keys["c"] == "c" and keys["x.y.z"] == "x_y_z"
    assert keys["action.prev"] == "action_prev"
    assert keys["a.b"] not in ("a_b", "a.b") and "." not in keys["a.b"]
    assert len(set(keys.values())) == len(keys)


@pytest.mark.parametrize("name", FOLDERS)
def test_matches_lerobot_reader(loaded, name):
    meta, buf, truth = loaded(name)
    lengths = truth["lengths"]
    assert buf.episode_ends.tolist() == np.cumsum(lengths).tolist() == [23, 54, 71, 111]
    assert buf.demo_names == ["episode_0", "episode_1", "episode_2", "episode_3"]
    # state and action: exactly what lerobot returns (and what went in)
    assert buf["observation_state"].dtype == torch.float32 and buf["action"].dtype == torch.float32
    np.testing.assert_array_equal(buf["observation_state"].numpy(), truth["lerobot_state"])
    np.testing.assert_array_equal(buf["action"].numpy(), truth["lerobot_action"])
    np.testing.assert_array_equal(buf["action"].numpy(), truth["action"])
    # episode_index, frame_index, timestamp of every row as lerobot's
    np.testing.assert_array_equal(buf.frame_info["episode_index"], truth["episode_index"])
    np.testing.assert_array_equal(buf.frame_info["frame_index"], truth["frame_index"])
    np.testing.assert_array_equal(buf.frame_info["timestamp"].astype(np.float64), truth["timestamp"])
    for cam, feature in CAMS.items():
        key = feature.replace(".", "_")
        img = buf[key]
        assert img.dtype == torch.uint8 and img.shape == (111, 3, 84, 84) and img.is_contiguous()
        diff = np.abs(chw_to_hwc(img).astype(int) - truth[f"lerobot_{cam}"].astype(int))
        assert diff.max() <= 1, f"{name} {cam}: max grey-level difference {diff.max()}"
        if name == "images":  # PNG in parquet: lossless
            np.testing.assert_array_equal(chw_to_hwc(img), truth[cam])


def test_frame_order_is_checked_per_frame(loaded):
    """Each frame is its own: swapping two rows' frames would break the comparison (the disc moves)."""
    _, buf, truth = loaded("video_multifile")
    a = chw_to_hwc(buf["observation_images_agentview"]).astype(int)
    assert np.abs(a[[1, 0]] - truth["lerobot_agentview"][:2]).max() > 1
    assert np.abs(a[23] - truth["lerobot_agentview"][22]).max() > 1  # an episode boundary


def test_resize_once_at_load(loaded):
    meta, _, truth = loaded("video_h264")
    small = with_image_size(meta, 32)
    assert small["obs"]["observation_images_wrist"]["shape"] == [3, 32, 32]
    assert small["obs"]["observation_images_wrist"]["dataset_key"] == "observation.images.wrist"
    buf = load_dataset(root("video_h264"), small, resize=True)
    assert buf["observation_images_wrist"].shape == (111, 3, 32, 32)
    want = resize_frames(torch.from_numpy(truth["lerobot_wrist"]).permute(0, 3, 1, 2), (32, 32))
    assert (buf["observation_images_wrist"].int() - want.int()).abs().max() <= 1
    with pytest.raises(DatasetError, match="set task.image_size"):
        load_dataset(root("video_h264"), small)  # without resize the size must match


def test_split_by_episode_like_robomimic(loaded):
    meta, buf, _ = loaded("images")
    ds = RobomimicImageDataset(None, meta, horizon=4, n_obs_steps=2, n_action_steps=2, val_ratio=0.25, seed=0,
                               buffer=buf)
    val = ds.get_validation_dataset()
    assert ds.val_mask.sum() == 1 and (ds.train_mask == ~ds.val_mask).all()
    ep = int(np.nonzero(ds.val_mask)[0][0])
    lo, hi = ([0] + buf.episode_ends.tolist())[ep], buf.episode_ends[ep]
    rows = val.sampler.sample_rows(torch.arange(len(val)))
    assert rows.min() >= lo and rows.max() < hi  # validation windows only from the held-out episode
    b = ds.get_batch([0])
    assert set(b["obs"]) == set(meta["obs"]) and b["obs"]["observation_images_wrist"].shape == (1, 2, 3, 84, 84)


def _tiny_policy(meta):
    cfg = PolicyConfig(shape_meta=meta, horizon=4, n_obs_steps=2, n_action_steps=2, num_inference_steps=2,
                       crop_shape=(76, 76), n_layer=1, n_emb=32, n_head=2, vision_width=16)
    return DiffusionPolicy(cfg, backend="reference").eval()


def test_predict_action_takes_dataset_names(loaded, tmp_path):
    meta, buf, _ = loaded("video_av1")
    policy = _tiny_policy(meta)
    path = tmp_path / "p.safetensors"
    policy.save(path)
    policy = load_policy(path, backend="reference")  # the mapping travels in the saved config
    assert policy.config.shape_meta["obs"]["observation_state"]["dataset_key"] == "observation.state"
    by_key = {k: buf[k][:2].unsqueeze(0) for k in meta["obs"]}
    by_name = {m.get("dataset_key", k): by_key[k] for k, m in meta["obs"].items()}
    outs = [policy.predict_action(o, generator=torch.Generator().manual_seed(0))["action"] for o in (by_key, by_name)]
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    with pytest.raises(ObsError, match="'observation_state' or 'observation.state'"):
        policy.predict_action({k: v for k, v in by_name.items() if k != "observation.state"})


def test_trainer_on_lerobot_folder(tmp_path):
    """`dp-fast train --dataset DIR --image-size 16` in-process: shape_meta, resize, split, saved policy."""
    from dp_fast.train.config import build_config
    from dp_fast.train.trainer import Trainer
    from tests.train.common import overrides

    cfg = build_config(None, overrides(root("video_multifile"), task__image_size=16, task__val_ratio=0.25,
                                       training__num_epochs=1, training__max_total_steps=2, training__val_every=1))
    torch.set_num_threads(1)
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    sm = tr.policy_config.shape_meta
    assert sm["obs"]["observation_images_agentview"] == {"shape": [3, 16, 16], "type": "rgb",
                                                         "dataset_key": "observation.images.agentview"}
    assert tr.dataset.replay_buffer["observation_images_agentview"].shape == (111, 3, 16, 16)
    assert tr.dataset.val_mask.sum() == 1
    assert tr.env_args is None  # a LeRobot dataset not written by dp-fast convert: no simulator settings
    tr.run()
    policy = load_policy(tr.ckpt.policy_path, backend="reference")
    buf = tr.dataset.replay_buffer
    obs = {m.get("dataset_key", k): buf[k][:2].unsqueeze(0) for k, m in sm["obs"].items()}
    assert policy.predict_action(obs)["action"].shape == (1, policy.n_action_steps, 7)


# ---------------------------------------------------------------------- bad input
def broken_copy(tmp_path, name="video_multifile"):
    dst = tmp_path / name
    shutil.copytree(root(name), dst)
    return dst


def test_refuses_v2_with_version(tmp_path):
    d = broken_copy(tmp_path, "images")
    info = (d / "meta" / "info.json").read_text().replace('"v3.0"', '"v2.1"')
    (d / "meta" / "info.json").write_text(info)
    with pytest.raises(DatasetError, match=r"codebase_version v2\.1 is not supported.*v3\.0.*"
                                           r"convert_dataset_v21_to_v30"):
        dataset_shape_meta(d)


def test_not_a_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match="without meta/info.json"):
        dataset_shape_meta(tmp_path)


def test_missing_data_file(tmp_path):
    d = broken_copy(tmp_path)
    (d / "data" / "chunk-000" / "file-002.parquet").unlink()
    with pytest.raises(DatasetError, match=r"file-002\.parquet: missing data file \(episode 2\)"):
        load_dataset(d, dataset_shape_meta(d))


def test_missing_video_file(tmp_path):
    d = broken_copy(tmp_path)
    (d / "videos" / "observation.images.wrist" / "chunk-000" / "file-001.mp4").unlink()
    with pytest.raises(DatasetError, match=r"wrist/chunk-000/file-001\.mp4: missing video file .*episode 1"):
        load_dataset(d, dataset_shape_meta(d))


def test_missing_episode_table(tmp_path):
    d = broken_copy(tmp_path)
    shutil.rmtree(d / "meta" / "episodes")
    with pytest.raises(DatasetError, match="no episode table"):
        dataset_shape_meta(d)


def test_feature_absent_from_data(tmp_path):
    import pyarrow.parquet as pq

    d = broken_copy(tmp_path)
    p = d / "data" / "chunk-000" / "file-003.parquet"
    t = pq.read_table(p)
    pq.write_table(t.drop(["observation.state"]), p)
    with pytest.raises(DatasetError, match=r"file-003\.parquet: features \['observation.state'\] named in info.json "
                                           r"are absent from the data \(episode 3\)"):
        load_dataset(d, dataset_shape_meta(d))


def _rewrite_video(src, dst, keep):
    """Re-encode the first `keep` frames of src into dst (H.264), same frame rate and times."""
    import av

    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)][:keep]
    with av.open(str(dst), "w") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        for i, img in enumerate(frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for pkt in s.encode(f):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def test_video_shorter_than_episode(tmp_path):
    d = broken_copy(tmp_path, "video_av1")
    p = d / "videos" / "observation.images.agentview" / "chunk-000" / "file-000.mp4"
    tmp = tmp_path / "short.mp4"
    _rewrite_video(p, tmp, keep=100)  # 111 frames: episode 3 (frames 71..110) loses its last 11
    shutil.copy(tmp, p)
    with pytest.raises(DatasetError, match=r"agentview/chunk-000/file-000\.mp4: video shorter than episode 3 .*"
                                           r"11 frames missing"):
        load_dataset(d, dataset_shape_meta(d))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_video(tmp_path, damage):
    d = broken_copy(tmp_path)
    p = d / "videos" / "observation.images.agentview" / "chunk-000" / "file-003.mp4"
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3] if damage == "truncated" else bytes(len(data)))
    with pytest.raises(DatasetError, match=r"agentview/chunk-000/file-003\.mp4: (unreadable|corrupt) video "
                                           r".*episode 3"):
        load_dataset(d, dataset_shape_meta(d))


def test_not_enough_memory(tmp_path, monkeypatch):
    import dp_fast.data.frames as frames

    monkeypatch.setattr(frames, "available_memory_bytes", lambda: 1 << 20)
    d = root("images")
    with pytest.raises(DatasetError, match=r"do not fit in memory: 111 frames .* need 4\.5 MiB .* "
                                           r"1\.0 MiB is available"):
        load_dataset(d, dataset_shape_meta(d))
