"""task.image_size / --image-size: images resized once at load, for robomimic files as for LeRobot folders."""
import numpy as np
import pytest
import torch

from dp_fast.data import DatasetError, load_robomimic_hdf5
from dp_fast.data.formats import load_dataset
from dp_fast.data.frames import buffer_nbytes, parse_image_size, resize_frames, with_image_size
from dp_fast.train.config import build_config
from tests.data.make_hdf5 import SMALL_META, concat_hwc, write_small


def test_parse_and_apply_image_size():
    assert parse_image_size(None) is None and parse_image_size(48) == (48, 48) and parse_image_size([4, 6]) == (4, 6)
    for bad in (0, [1], [2, 0], "48", True, 4.0):
        with pytest.raises(ValueError):
            parse_image_size(bad)
    meta = with_image_size(SMALL_META, [4, 3])
    assert meta["obs"]["agentview_image"]["shape"] == [3, 4, 3]
    assert meta["obs"]["robot0_eef_pos"] == SMALL_META["obs"]["robot0_eef_pos"]
    assert SMALL_META["obs"]["agentview_image"]["shape"] == [3, 8, 6]  # not modified in place
    assert buffer_nbytes(SMALL_META, 10) == 10 * (3 * 8 * 6 + 4 * (3 + 4 + 2 + 7))
    assert build_config(None, {"task.image_size": [32, 48]}).task.image_size == [32, 48]
    with pytest.raises(ValueError, match="task.image_size"):
        build_config(None, {"task.image_size": -3})


def test_resize_frames():
    x = torch.arange(2 * 3 * 8 * 6, dtype=torch.float32).reshape(2, 3, 8, 6).remainder(256).to(torch.uint8)
    assert resize_frames(x, (8, 6)) is x
    y = resize_frames(torch.full((1, 3, 8, 6), 77, dtype=torch.uint8), (4, 3))
    assert y.dtype == torch.uint8 and y.shape == (1, 3, 4, 3) and (y == 77).all()


def test_robomimic_resize_at_load(tmp_path):
    path = tmp_path / "d.hdf5"
    demos = write_small(path, [3, 5])
    small = with_image_size(SMALL_META, [4, 3])
    buf = load_dataset(path, small, resize=True)
    want = resize_frames(torch.from_numpy(concat_hwc(demos, "agentview_image")).permute(0, 3, 1, 2), (4, 3))
    assert torch.equal(buf["agentview_image"], want)
    np.testing.assert_array_equal(buf["action"].numpy(), load_robomimic_hdf5(path, SMALL_META)["action"].numpy())
    with pytest.raises(DatasetError, match="expected shape"):
        load_robomimic_hdf5(path, small)  # without resize the stored size must match shape_meta
