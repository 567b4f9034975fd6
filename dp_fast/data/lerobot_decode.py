"""Decoding a LeRobot dataset's frames with PyAV: mp4 video files (many episodes per file) and images
stored in the parquet data (PNG / JPEG bytes).

Video frames are chosen as lerobot chooses them: the frame whose presentation time is nearest to
`from_timestamp + timestamp` of each row, and it must lie within TIMESTAMP_TOLERANCE_S (lerobot's
default `tolerance_s`). A file is read twice: its packets' timestamps first (no decoding), which
fixes the frame of every row and finds a video shorter than its episodes before anything is
decoded; then one sequential decode, handing over each episode's frames as soon as its last one is
decoded (memory: about one episode at the source resolution).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np

from .buffer import DatasetError

TIMESTAMP_TOLERANCE_S = 1e-4

# (episode index, timestamps (n,) float64 seconds within the file)
Request = Tuple[int, np.ndarray]


def pyav():
    """The `av` module, or DatasetError saying how to install it (the `lerobot` extra)."""
    try:
        import av
    except ImportError:
        raise DatasetError("LeRobot datasets' videos and images need PyAV: pip install -e '.[lerobot]'") from None
    return av


def _eps(requests: Sequence[Request]) -> str:
    idx = [e for e, _ in requests]
    return f"episode {idx[0]}" if len(idx) == 1 else f"episodes {idx[0]}..{idx[-1]}"


def _frame_times(path: Path, where: str) -> Tuple[np.ndarray, List[int]]:
    """(sorted presentation times in s, the matching pts) of the first video stream, without decoding."""
    av = pyav()
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise DatasetError(f"{path}: no video stream ({where})")
            s = c.streams.video[0]
            pts = sorted({int(p.pts) for p in c.demux(s) if p.pts is not None})
            tb = s.time_base
    except DatasetError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: unreadable video ({where}): {type(e).__name__}: {e}") from None
    times = np.array([float(p * tb) for p in pts], dtype=np.float64)
    return times, pts


def _nearest(times: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Index of the time in sorted `times` nearest to each of `ts` (the earlier one on a tie)."""
    if len(times) == 1:
        return np.zeros(len(ts), dtype=np.int64)
    j = np.clip(np.searchsorted(times, ts), 1, len(times) - 1)
    return np.where(np.abs(times[j - 1] - ts) <= np.abs(times[j] - ts), j - 1, j)


def _to_array(frame, channels: int) -> np.ndarray:
    return frame.to_ndarray(format="rgb24" if channels == 3 else "gray").reshape(frame.height, frame.width, channels)


def decode_video(path: Path, requests: Sequence[Request], hwc: Tuple[int, int, int],
                 feature: str) -> Iterator[Tuple[int, np.ndarray]]:
    """Yield (position in `requests`, (n, H, W, C) uint8 frames) for each request, as each completes.

    requests: (episode index, timestamps within the file). Errors (DatasetError) name the file, the
    feature and the episode: missing or unreadable file, a frame size other than info.json's, a
    video that ends (or whose decoding stops) before an episode's last frame.
    """
    av = pyav()
    path = Path(path)
    where = f"feature '{feature}', {_eps(requests)}"
    if not path.is_file():
        raise DatasetError(f"{path}: missing video file ({where})")
    times, pts = _frame_times(path, where)
    if len(times) == 0:
        raise DatasetError(f"{path}: video has no frames ({where})")
    # which decoded frame (by pts) goes to which (request, row)
    wanted: Dict[int, List[Tuple[int, int]]] = {}
    last_needed: List[int] = []
    for r, (ep, ts) in enumerate(requests):
        j = _nearest(times, ts)
        off = np.abs(times[j] - ts)
        bad = np.nonzero(off > TIMESTAMP_TOLERANCE_S)[0]
        if len(bad):
            i = int(bad[0])
            if ts[i] > times[-1]:
                raise DatasetError(
                    f"{path}: video shorter than episode {ep} ({where}): it ends at {times[-1]:.4f} s "
                    f"({len(times)} frames), the episode's frame {i} is at {ts[i]:.4f} s and its last at "
                    f"{ts[-1]:.4f} s ({int((ts > times[-1] + TIMESTAMP_TOLERANCE_S).sum())} frames missing)")
            raise DatasetError(f"{path}: episode {ep} ({where}): no frame within {TIMESTAMP_TOLERANCE_S} s of "
                               f"t = {ts[i]:.4f} s (row {i}; nearest frame at {times[j[i]]:.4f} s)")
        for row, k in enumerate(j):
            wanted.setdefault(pts[int(k)], []).append((r, row))
        last_needed.append(pts[int(j.max())])

    h, w, c = hwc
    out: Dict[int, np.ndarray] = {}
    todo = {r: len(ts) for r, (_, ts) in enumerate(requests)}
    try:
        with av.open(str(path)) as cont:
            stream = cont.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in cont.decode(stream):
                if frame.pts is None or frame.pts not in wanted:
                    continue
                if (frame.height, frame.width) != (h, w):
                    raise DatasetError(f"{path}: frames are {frame.height}x{frame.width}, info.json says "
                                       f"{h}x{w} ({where})")
                img = _to_array(frame, c)
                for r, row in wanted.pop(frame.pts):
                    if r not in out:
                        out[r] = np.empty((len(requests[r][1]), h, w, c), dtype=np.uint8)
                    out[r][row] = img
                    todo[r] -= 1
                    if todo[r] == 0:
                        yield r, out.pop(r)
    except DatasetError:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise DatasetError(f"{path}: corrupt video ({where}): decoding failed: {type(e).__name__}: {e}") from None
    if wanted:
        r, row = min(v for rows in wanted.values() for v in rows)
        ep, ts = requests[r]
        raise DatasetError(f"{path}: corrupt video ({where}): decoding stopped before episode {ep}'s frame {row} "
                           f"at {ts[row]:.4f} s ({sum(len(v) for v in wanted.values())} frames not decoded)")


_MAGIC = ((b"\x89PNG", "png"), (b"\xff\xd8", "mjpeg"))


def decode_image(data: bytes, hwc: Tuple[int, int, int], where: str) -> np.ndarray:
    """PNG / JPEG bytes -> (H, W, C) uint8 (a fresh decoder per image: PyAV's PNG decoder keeps state)."""
    av = pyav()
    name = next((codec for magic, codec in _MAGIC if data[:len(magic)] == magic), None)
    try:
        if name is not None:
            frames = av.CodecContext.create(name, "r").decode(av.Packet(data))
        else:  # another image format: let ffmpeg probe it
            import io

            with av.open(io.BytesIO(data)) as c:
                frames = list(c.decode(video=0))
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise DatasetError(f"{where}: undecodable image ({type(e).__name__}: {e})") from None
    if not frames:
        raise DatasetError(f"{where}: undecodable image (no frame)")
    h, w, c = hwc
    f = frames[0]
    if (f.height, f.width) != (h, w):
        raise DatasetError(f"{where}: image is {f.height}x{f.width}, info.json says {h}x{w}")
    return _to_array(f, c)
