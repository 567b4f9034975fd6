"""Write a LeRobotDataset v3.0 folder with PyAV and pyarrow (no lerobot), episode by episode.

What is written (the layout `lerobot_meta` reads): `meta/info.json`; the rows of each group of
`episodes_per_file` episodes in `data/chunk-XXX/file-YYY.parquet` (1-d features as fixed-size float32
lists, the bookkeeping columns timestamp / frame_index / episode_index / index / task_index, and
for `images="image"` the frames as PNG bytes); for `images="video"` each camera's frames of that
group in `videos/<feature>/chunk-XXX/file-YYY.mp4`, episode after episode, frame i of the file at
i / fps seconds; `meta/episodes/chunk-000/file-000.parquet` (the episode table); `meta/tasks.parquet`
and `meta/stats.json` (min / max / mean / std / count per feature).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .buffer import ACTION_KEY, DatasetError
from .lerobot_decode import pyav
from .lerobot_meta import SUPPORTED_VERSION, pyarrow_modules

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CHUNKS_SIZE = 1000  # files per chunk folder
CODEC_NAMES = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264", "h264": "h264", "libx265": "hevc"}


def _hf_type(spec: Mapping[str, Any]) -> Dict[str, Any]:
    """The Hugging Face `datasets` feature type of a column (schema metadata, for readers that use it)."""
    if spec["dtype"] == "image":
        return {"_type": "Image"}
    value = {"dtype": spec["dtype"], "_type": "Value"}
    return value if spec.get("scalar") else {"feature": value, "length": int(spec["shape"][0]), "_type": "List"}


class LeRobotWriter:
    """features: {name: {"dtype": "float32", "shape": [D]} | {"dtype": "image", "shape": [H, W, C]}};
    with images="video" the image features are written as mp4 videos (dtype "video")."""

    def __init__(self, root, fps: int, features: Mapping[str, Mapping[str, Any]], robot_type: Optional[str] = None,
                 images: str = "video", vcodec: str = "libsvtav1", crf: int = 30, gop: int = 2,
                 episodes_per_file: Optional[int] = None, overwrite: bool = False):
        if images not in ("video", "image"):
            raise ValueError(f"images must be 'video' or 'image', got {images!r}")
        self.pa, self.pq = pyarrow_modules()
        self.av = pyav()
        self.root = Path(root)
        if self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                raise DatasetError(f"{self.root}: exists and is not empty (pass overwrite)")
            shutil.rmtree(self.root)
        self.fps, self.robot_type, self.images = int(fps), robot_type, images
        self.vcodec, self.crf, self.gop = vcodec, int(crf), int(gop)
        self.per_file = episodes_per_file
        self.features: Dict[str, Dict[str, Any]] = {}
        for name, spec in features.items():
            spec = {"dtype": spec["dtype"], "shape": [int(s) for s in spec["shape"]]}
            if spec["dtype"] == "image":
                spec["dtype"] = images
                spec["names"] = ["height", "width", "channels"]
            self.features[name] = spec
        self.image_keys = [n for n, s in self.features.items() if s["dtype"] in ("video", "image")]
        self.numeric_keys = [n for n in self.features if n not in self.image_keys]
        self.episodes: List[Dict[str, Any]] = []
        self.tasks: Dict[str, int] = {}
        self.n_frames = 0
        self.file_index = -1
        self.rows: Dict[str, List[np.ndarray]] = {}
        self.videos: Dict[str, Any] = {}
        self.file_frames = 0  # frames in the current data / video file
        self.sums: Dict[str, Dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ files
    def _loc(self) -> Dict[str, int]:
        return {"chunk_index": self.file_index // CHUNKS_SIZE, "file_index": self.file_index % CHUNKS_SIZE}

    def _open_files(self) -> None:
        self.file_index += 1
        self.file_frames = 0
        in_rows = self.numeric_keys + (self.image_keys if self.images == "image" else [])
        self.rows = {k: [] for k in in_rows + ["timestamp", "frame_index", "episode_index", "index", "task_index"]}
        if self.images != "video":
            return
        os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its settings to stderr otherwise
        for key in self.image_keys:
            path = self.root / VIDEO_PATH.format(video_key=key, **self._loc())
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w, _ = self.features[key]["shape"]
            cont = self.av.open(str(path), "w")
            try:
                stream = cont.add_stream(self.vcodec, rate=self.fps)
            except (ValueError, self.av.error.FFmpegError) as e:
                cont.close()
                raise DatasetError(f"video encoder {self.vcodec!r} is not available in this PyAV build: {e}") from None
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"g": str(self.gop), "crf": str(self.crf)}
            self.videos[key] = (cont, stream)

    def _close_files(self) -> None:
        if self.file_index < 0 or not self.rows["index"]:
            return
        for cont, stream in self.videos.values():
            for p in stream.encode():
                cont.mux(p)
            cont.close()
        self.videos = {}
        pa = self.pa
        cols, types = {}, {}
        for name, parts in self.rows.items():
            spec = self.features.get(name)
            if spec is not None and spec["dtype"] == "image":
                cols[name] = pa.array([{"bytes": b, "path": None} for p in parts for b in p],
                                      type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
                types[name] = {"dtype": "image"}
            elif spec is not None:
                flat = np.concatenate(parts).astype(np.float32)
                cols[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
                types[name] = {"dtype": "float32", "shape": [flat.shape[1]]}
            else:
                arr = np.concatenate(parts)
                cols[name] = pa.array(arr)
                types[name] = {"dtype": str(arr.dtype), "scalar": True}
        table = pa.table(cols)
        meta = {"info": {"features": {k: _hf_type(v) for k, v in types.items()}}}
        table = table.replace_schema_metadata({"huggingface": json.dumps(meta)})
        path = self.root / DATA_PATH.format(**self._loc())
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pq.write_table(table, path)

    # ------------------------------------------------------------------ episodes
    def add_episode(self, frames: Mapping[str, np.ndarray], task: str) -> None:
        """frames: {feature: (n, D) numbers | (n, H, W, C) uint8}, every feature, one length n."""
        missing = [k for k in self.features if k not in frames]
        if missing:
            raise DatasetError(f"episode {len(self.episodes)}: no frames for features {missing}")
        n = len(frames[ACTION_KEY])
        if n < 1 or any(len(frames[k]) != n for k in self.features):
            raise DatasetError(f"episode {len(self.episodes)}: features have lengths "
                               f"{ {k: len(frames[k]) for k in self.features} }")
        if self.file_index < 0 or (self.per_file and len(self.episodes) % self.per_file == 0):
            self._close_files()
            self._open_files()
        e = len(self.episodes)
        ti = self.tasks.setdefault(task, len(self.tasks))
        frame_index = np.arange(n, dtype=np.int64)
        self.rows["timestamp"].append((frame_index / self.fps).astype(np.float32))
        self.rows["frame_index"].append(frame_index)
        self.rows["episode_index"].append(np.full(n, e, dtype=np.int64))
        self.rows["index"].append(np.arange(self.n_frames, self.n_frames + n, dtype=np.int64))
        self.rows["task_index"].append(np.full(n, ti, dtype=np.int64))
        ep = {"episode_index": e, "tasks": [task], "length": n, "data/chunk_index": self._loc()["chunk_index"],
              "data/file_index": self._loc()["file_index"], "dataset_from_index": self.n_frames,
              "dataset_to_index": self.n_frames + n}
        for k in self.numeric_keys:
            arr = np.asarray(frames[k], dtype=np.float32).reshape(n, -1)
            self.rows[k].append(arr)
            self._stats(k, arr)
        for k in self.image_keys:
            arr = np.asarray(frames[k])
            if arr.dtype != np.uint8 or list(arr.shape[1:]) != self.features[k]["shape"]:
                raise DatasetError(f"episode {e}: feature '{k}': expected (n, {self.features[k]['shape']}) uint8, "
                                   f"got {arr.shape} {arr.dtype}")
            self._stats(k, arr.reshape(-1, arr.shape[-1]) / 255.0)
            fmt = "rgb24" if arr.shape[-1] == 3 else "gray"
            if self.images == "video":
                cont, stream = self.videos[k]
                for i, img in enumerate(arr):
                    f = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img if fmt == "rgb24" else img[..., 0]),
                                                   format=fmt)
                    f.pts = self.file_frames + i
                    for p in stream.encode(f):
                        cont.mux(p)
                ep.update({f"videos/{k}/chunk_index": self._loc()["chunk_index"],
                           f"videos/{k}/file_index": self._loc()["file_index"],
                           f"videos/{k}/from_timestamp": self.file_frames / self.fps,
                           f"videos/{k}/to_timestamp": (self.file_frames + n) / self.fps})
            else:
                self.rows[k].append([_png(img, fmt) for img in arr])
        self.file_frames += n
        self.n_frames += n
        self.episodes.append(ep)

    def _stats(self, key: str, x: np.ndarray) -> None:
        x = x.astype(np.float64)
        s = self.sums.setdefault(key, {"min": np.full(x.shape[1], np.inf), "max": np.full(x.shape[1], -np.inf),
                                       "sum": np.zeros(x.shape[1]), "sq": np.zeros(x.shape[1]), "count": 0})
        s["min"], s["max"] = np.minimum(s["min"], x.min(0)), np.maximum(s["max"], x.max(0))
        s["sum"] += x.sum(0)
        s["sq"] += (x * x).sum(0)
        s["count"] += len(x)

    # ------------------------------------------------------------------ metadata
    def finish(self) -> Path:
        """Close the last files and write the metadata; returns the dataset root."""
        if not self.episodes:
            raise DatasetError(f"{self.root}: no episodes written")
        self._close_files()
        pa, pq = self.pa, self.pq
        meta = self.root / "meta"
        (meta / "episodes" / "chunk-000").mkdir(parents=True, exist_ok=True)
        cols = {k: [ep[k] for ep in self.episodes] for k in self.episodes[0]}
        cols["meta/episodes/chunk_index"] = [0] * len(self.episodes)
        cols["meta/episodes/file_index"] = [0] * len(self.episodes)
        pq.write_table(pa.table(cols), meta / "episodes" / "chunk-000" / "file-000.parquet")
        tasks = sorted(self.tasks, key=self.tasks.get)
        pandas_meta = {"index_columns": ["__index_level_0__"], "column_indexes": [],
                       "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                                    "numpy_type": "int64", "metadata": None},
                                   {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                                    "numpy_type": "object", "metadata": None}]}
        t = pa.table({"task_index": pa.array([self.tasks[x] for x in tasks], pa.int64()),
                      "__index_level_0__": pa.array(tasks, pa.string())})
        pq.write_table(t.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), meta / "tasks.parquet")
        (meta / "stats.json").write_text(json.dumps(self._stats_json(), indent=1))
        (meta / "info.json").write_text(json.dumps(self._info(), indent=4))
        return self.root

    def _stats_json(self) -> Dict[str, Any]:
        out = {}
        for k, s in self.sums.items():
            mean = s["sum"] / s["count"]
            std = np.sqrt(np.maximum(s["sq"] / s["count"] - mean * mean, 0.0))
            vals = {"min": s["min"], "max": s["max"], "mean": mean, "std": std}
            if k in self.image_keys:  # per channel, shaped (C, 1, 1) as lerobot stores image stats
                out[k] = {n: v.reshape(-1, 1, 1).tolist() for n, v in vals.items()}
            else:
                out[k] = {n: v.tolist() for n, v in vals.items()}
            out[k]["count"] = [int(s["count"])]
        return out

    def _info(self) -> Dict[str, Any]:
        feats: Dict[str, Any] = {}
        for k, spec in self.features.items():
            f: Dict[str, Any] = {"dtype": spec["dtype"], "shape": spec["shape"], "names": spec.get("names")}
            if spec["dtype"] == "video":
                h, w, c = spec["shape"]
                codec = CODEC_NAMES.get(self.vcodec, self.vcodec)
                f["info"] = {"video.height": h, "video.width": w, "video.codec": codec, "video.pix_fmt": "yuv420p",
                             "video.is_depth_map": False, "video.fps": self.fps, "video.channels": c,
                             "has_audio": False}
            feats[k] = f
        for k, dt in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                      ("index", "int64"), ("task_index", "int64")):
            feats[k] = {"dtype": dt, "shape": [1], "names": None}
        return {"codebase_version": SUPPORTED_VERSION, "robot_type": self.robot_type,
                "total_episodes": len(self.episodes), "total_frames": self.n_frames, "total_tasks": len(self.tasks),
                "chunks_size": CHUNKS_SIZE, "fps": self.fps, "splits": {"train": f"0:{len(self.episodes)}"},
                "data_path": DATA_PATH, "video_path": VIDEO_PATH if self.images == "video" else None,
                "features": feats}


def _png(img: np.ndarray, fmt: str) -> bytes:
    av = pyav()
    cc = av.CodecContext.create("png", "w")
    cc.height, cc.width = img.shape[:2]
    cc.pix_fmt = fmt
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img if fmt == "rgb24" else img[..., 0]), format=fmt)
    return b"".join(bytes(p) for p in list(cc.encode(frame)) + list(cc.encode(None)))
