"""The PNG still written next to each rollout video (dp_fast.sim.video.write_still / still_path)."""
import numpy as np
import pytest
from matplotlib.image import imread

from dp_fast.sim.video import still_path, write_still


def test_still_path_is_the_video_name_with_png():
    assert still_path("out/v/test_000_seed1.mp4").as_posix() == "out/v/test_000_seed1.png"
    assert still_path("out/v/test_000.frames.npz").as_posix() == "out/v/test_000.png"  # the no-ffmpeg fallback


def test_still_shows_first_middle_and_last_frames_enlarged(tmp_path):
    t, h, w = 10, 8, 6
    frames = np.zeros((t, h, w, 3), np.uint8)
    for i in range(t):
        frames[i, :, :, 0] = 20 * i          # each frame its own red level
        frames[i, 2, 3] = (0, 255, 0)        # one green pixel
    path = write_still(tmp_path / "s.png", frames, n=4, min_height=20)
    img = np.round(imread(path)[..., :3] * 255).astype(np.uint8)
    scale = 3                                 # the smallest whole factor giving >= 20 rows from 8
    assert img.shape == (h * scale, 4 * w * scale + 3 * 4, 3)
    for tile, i in enumerate([0, 3, 6, 9]):  # first, evenly spaced, last
        x0 = tile * (w * scale + 4)
        got = img[:, x0:x0 + w * scale]
        want = np.repeat(np.repeat(frames[i], scale, axis=0), scale, axis=1)
        np.testing.assert_array_equal(got, want, err_msg=f"tile {tile} is not frame {i}")
        if tile < 3:
            assert (img[:, x0 + w * scale:x0 + w * scale + 4] == 255).all()  # white gap
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\) uint8"):
        write_still(tmp_path / "s.png", np.full((2, 4, 4, 3), 7, np.float32))
    assert not list(tmp_path.iterdir())


def test_two_frame_video_gives_two_tiles(tmp_path):
    frames = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 200, np.uint8)])
    img = imread(write_still(tmp_path / "s.png", frames, n=4, min_height=4))
    assert img.shape[:2] == (4, 4 + 4 + 4)
