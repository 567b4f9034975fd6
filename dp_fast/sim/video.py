"""mp4 writer for rollout videos (H.264 through the ffmpeg binary that `imageio-ffmpeg` ships), and the
PNG still written next to each video.

    path = write_video("out/test_000.mp4", frames, fps=20)   # frames: (T, H, W, 3) uint8
    write_still(still_path(path), frames)                   # out/test_000.png

The encoder is the first available of: the `imageio-ffmpeg` package (in the `sim` extra; it carries its
own ffmpeg binary), an `ffmpeg` on PATH. Without either, the frames are saved losslessly as
`<path without .mp4>.frames.npz` (array "frames", (T, H, W, 3) uint8, and "fps") and that path is returned;
`video_backend()` says which applies.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ..atomic_file import atomic_write


def ffmpeg_exe() -> Optional[str]:
    """Path of an ffmpeg binary: imageio-ffmpeg's, else one on PATH, else None."""
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception:
        return shutil.which("ffmpeg")


def video_backend() -> str:
    """"ffmpeg" (mp4 files) or "npz" (the fallback: raw frames)."""
    return "ffmpeg" if ffmpeg_exe() else "npz"


def _as_frames(frames) -> np.ndarray:
    arr = np.asarray(frames if not isinstance(frames, (list, tuple)) else np.stack(frames))
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {arr.shape} {arr.dtype}")
    if len(arr) == 0:
        raise ValueError("no frames to write")
    return np.ascontiguousarray(arr)


def write_video(path: Union[str, os.PathLike], frames: Union[np.ndarray, Sequence[np.ndarray]],
                fps: float = 20.0, crf: int = 22) -> str:
    """Encode frames (T, H, W, 3) uint8 (rows top-to-bottom) as an H.264 mp4; returns the path written.

    Odd frame sizes are padded by one row / column (yuv420p needs even sizes). Written to a temporary
    name and renamed, so a file at `path` is always complete.
    """
    arr = _as_frames(frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exe = ffmpeg_exe()
    if exe is None:
        out = path.with_name(path.stem + ".frames.npz")
        np.savez_compressed(out, frames=arr, fps=np.float64(fps))
        return str(out)
    t, h, w, _ = arr.shape
    if h % 2 or w % 2:
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        h, w = arr.shape[1:3]
    with atomic_write(path, suffix=".tmp.mp4") as tmp:  # ffmpeg picks the container from the name
        cmd = [exe, "-y", "-loglevel", "error", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{w}x{h}",
               "-pix_fmt", "rgb24", "-r", f"{float(fps):g}", "-i", "-", "-an", "-vcodec", "libx264",
               "-pix_fmt", "yuv420p", "-crf", str(int(crf)), "-preset", "veryfast", str(tmp)]
        proc = subprocess.run(cmd, input=arr.tobytes(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"ffmpeg failed writing {path} ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
    return str(path)


def still_path(video_path: Union[str, os.PathLike]) -> Path:
    """Where the still of a video goes: the same name with .png (test_000.mp4 -> test_000.png)."""
    p = Path(video_path)
    name = p.name[:-len(".frames.npz")] if p.name.endswith(".frames.npz") else p.stem
    return p.with_name(name + ".png")


def write_still(path: Union[str, os.PathLike], frames, n: int = 4, min_height: int = 128) -> str:
    """A PNG of `n` frames of a video side by side: the first, the last and evenly spaced ones between,
    each enlarged by a whole factor (pixels repeated) to at least `min_height` rows, 4 white columns
    apart. Written atomically; returns the path."""
    from matplotlib.image import imsave

    arr = _as_frames(frames)
    picks = np.unique(np.linspace(0, len(arr) - 1, num=max(1, int(n))).round().astype(int))
    scale = max(1, -(-int(min_height) // arr.shape[1]))
    tiles = [np.repeat(np.repeat(arr[i], scale, axis=0), scale, axis=1) for i in picks]
    gap = np.full((tiles[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate([t for tile in tiles for t in (tile, gap)][:-1], axis=1)
    with atomic_write(path, suffix=".tmp.png") as tmp:
        imsave(tmp, strip, format="png")
    return str(path)


def read_video(path: Union[str, os.PathLike]) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of a file written by write_video (mp4 decoded with ffmpeg), for checks.
    Sizes padded to even by write_video stay padded."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return np.asarray(z["frames"])
    exe = ffmpeg_exe()
    if exe is None:
        raise RuntimeError(f"no ffmpeg to decode {path}")
    info = subprocess.run([exe, "-hide_banner", "-i", str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60).stderr.decode(errors="replace")
    m = re.search(r"Video:.*?\b(\d{2,5})x(\d{2,5})\b", info)
    if m is None:
        raise RuntimeError(f"cannot read the frame size of {path}: {info[-300:]}")
    w, h = int(m.group(1)), int(m.group(2))
    proc = subprocess.run([exe, "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace"))
    return np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, h, w, 3)
