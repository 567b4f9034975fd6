"""Read a LeRobotDataset v3.0 folder into the same in-memory ReplayBuffer as a robomimic file.

Episodes come in episode-index order from `meta/episodes/`; each episode's rows are taken from its data
file (selected by `episode_index`, ordered by `frame_index`, checked against the episode table's
row range), its video frames from its video file at `from_timestamp + timestamp` (lerobot's rule), its
in-parquet images decoded from their PNG / JPEG bytes. Everything is decoded once, with PyAV, into
uint8 (N, C, H, W) tensors (resized once when `resize`); low-dim features and `action` become float32.
Before anything is decoded: the features are checked against info.json and shape_meta, and the
buffer's size against the available memory. Needs the `lerobot` extra (PyAV, pyarrow).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from .buffer import ACTION_KEY, DatasetError, ReplayBuffer, parse_shape_meta
from .frames import check_fits_in_memory, resize_frames
from .lerobot_decode import decode_image, decode_video
from .lerobot_meta import DATASET_KEY, IMAGE_DTYPES, LeRobotMeta, pyarrow_modules

# written by `dp-fast convert` next to the LeRobot metadata: the robomimic file's env_args and each
# episode's first simulator state, so that rollouts can start from the demos (docs/lerobot.md)
SIM_FILE = Path("meta") / "robomimic.json"
ROW_COLUMNS = ("episode_index", "frame_index", "index", "timestamp")


def read_sim_file(root) -> Optional[Dict[str, Any]]:
    """The converter's meta/robomimic.json ({"env_args", "episodes": [{"demo", "states", "model"?}]}), or None."""
    p = Path(root) / SIM_FILE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: not valid JSON ({e})") from None


def lerobot_start_states(root, n: int, start: int):
    """(env_args, n rollout episodes from the first simulator states of episodes start, start + 1, ...)
    of a `dp-fast convert` copy (its meta/robomimic.json), as robomimic.read_start_states gives them."""
    sim = read_sim_file(root)
    if sim is None:
        raise DatasetError(f"{root}: no {SIM_FILE} (simulator env_args and start states; `dp-fast convert` "
                           f"writes it): rollouts need --task, and no train episodes")
    eps = sim["episodes"]
    if start + n > len(eps):
        raise DatasetError(f"{root}: {SIM_FILE} has {len(eps)} episodes, train episodes {start}..{start + n - 1} "
                           f"asked for")
    out = []
    for i in range(start, start + n):
        state = {"states": np.asarray(eps[i]["states"], dtype=np.float64)}
        if eps[i].get("model") is not None:
            state["model"] = eps[i]["model"]
        out.append({"split": "train", "demo": i, "state": state})
    return sim["env_args"], out


def _numeric(table, name: str, dim: int, where: str) -> np.ndarray:
    """A numeric column as (rows, dim): fixed-size lists, lists, or scalars (dim 1)."""
    pa, _ = pyarrow_modules()
    col = table.column(name).combine_chunks()
    if pa.types.is_fixed_size_list(col.type) or pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten().to_numpy(zero_copy_only=False)
        if flat.size != len(col) * dim:
            raise DatasetError(f"{where}: column '{name}' holds {flat.size} values for {len(col)} rows, "
                               f"info.json says {dim} per row")
        return flat.reshape(len(col), dim)
    if dim != 1:
        raise DatasetError(f"{where}: column '{name}' is a scalar column, info.json says shape [{dim}]")
    return col.to_numpy(zero_copy_only=False).reshape(-1, 1)


def _check_features(meta: LeRobotMeta, shape_meta: Mapping[str, Any], resize: bool) -> Dict[str, str]:
    """{policy key: dataset name} for the obs keys and action; DatasetError where info.json disagrees."""
    rgb, low, da = parse_shape_meta(shape_meta)
    names = {k: m.get(DATASET_KEY, k) for k, m in shape_meta["obs"].items()}
    names[ACTION_KEY] = ACTION_KEY
    for key, name in names.items():
        if name not in meta.features:
            raise DatasetError(f"{meta.info_path}: no feature '{name}' (shape_meta key '{key}'); "
                               f"features: {list(meta.features)}")
        kind = meta.kind(name)
        if key in rgb:
            if kind not in IMAGE_DTYPES:
                raise DatasetError(f"{meta.info_path}: feature '{name}' is {meta.features[name].get('dtype')}, "
                                   f"shape_meta key '{key}' wants an image or video")
            chw = meta.image_chw(name)
            if chw[0] != rgb[key][0] or (not resize and tuple(chw) != rgb[key]):
                raise DatasetError(f"{meta.info_path}: feature '{name}' is [C, H, W] = {chw}, shape_meta key "
                                   f"'{key}' wants {list(rgb[key])} (set task.image_size to resize at load)")
        else:
            want = low.get(key, (da,))
            shape = tuple(int(s) for s in meta.features[name].get("shape", ()))
            if (key != ACTION_KEY and kind != "low_dim") or shape != tuple(want):
                raise DatasetError(f"{meta.info_path}: feature '{name}' ({meta.features[name].get('dtype')}, "
                                   f"shape {list(shape)}) does not match shape_meta key '{key}' {list(want)}")
    return names


def _episode_rows(ep: Mapping[str, Any], path: Path, cols: Dict[str, np.ndarray]) -> np.ndarray:
    """Row positions of episode `ep` in a data file, in frame order, checked against the episode table."""
    e, n = ep["episode_index"], ep["length"]
    rows = np.nonzero(cols["episode_index"] == e)[0]
    if len(rows) != n:
        raise DatasetError(f"{path}: episode {e} has {len(rows)} rows, meta/episodes says {n}")
    rows = rows[np.argsort(cols["frame_index"][rows], kind="stable")]
    if not np.array_equal(cols["frame_index"][rows], np.arange(n)):
        raise DatasetError(f"{path}: episode {e}: frame_index is not 0..{n - 1}")
    if not np.array_equal(cols["index"][rows], np.arange(ep["dataset_from_index"], ep["dataset_to_index"])):
        raise DatasetError(f"{path}: episode {e}: rows are not the episode table's range "
                           f"[{ep['dataset_from_index']}, {ep['dataset_to_index']})")
    return rows


def _group(items, key) -> Dict[Path, List]:
    out: Dict[Path, List] = {}
    for it in items:
        out.setdefault(key(it), []).append(it)
    return out


def _put_frames(out: torch.Tensor, start: int, hwc_frames: np.ndarray) -> None:
    x = torch.from_numpy(np.ascontiguousarray(hwc_frames)).permute(0, 3, 1, 2)
    out[start:start + len(x)].copy_(resize_frames(x, tuple(out.shape[-2:])))


def load_lerobot(root, shape_meta: Mapping[str, Any], episodes: Optional[Sequence[int]] = None,
                 device="cpu", resize: bool = False) -> ReplayBuffer:
    """The features of shape_meta (dataset names from `dataset_key`) of every episode (or of `episodes`,
    by episode_index, in that order) into a ReplayBuffer; `buffer.frame_info` holds the rows'
    episode_index, frame_index and timestamp. resize: images of any size are resized to shape_meta's."""
    _, pq = pyarrow_modules()
    meta = LeRobotMeta(root)
    rgb, low, _ = parse_shape_meta(shape_meta)
    names = _check_features(meta, shape_meta, resize)
    by_index = {ep["episode_index"]: ep for ep in meta.episodes}
    if episodes is None:
        eps = meta.episodes
    else:
        absent = [e for e in episodes if e not in by_index]
        if absent or len(set(episodes)) != len(episodes):
            raise DatasetError(f"{meta.root}: episodes {list(episodes)}: unknown {absent} or repeated "
                               f"(it has {len(by_index)})")
        eps = [by_index[e] for e in episodes]
    lengths = np.array([ep["length"] for ep in eps], dtype=np.int64)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    total = int(ends[-1])
    check_fits_in_memory(shape_meta, total, str(meta.root))

    data: Dict[str, torch.Tensor] = {k: torch.empty((total, *s), dtype=torch.uint8) for k, s in rgb.items()}
    for k, s in list(low.items()) + [(ACTION_KEY, tuple(shape_meta["action"]["shape"]))]:
        data[k] = torch.empty((total, *s), dtype=torch.float32)
    info = {"episode_index": np.empty(total, np.int64), "frame_index": np.empty(total, np.int64),
            "timestamp": np.empty(total, np.float32)}
    numeric = [k for k in data if k not in rgb]
    in_parquet = [k for k in rgb if meta.features[names[k]]["dtype"] == "image"]
    videos = [k for k in rgb if meta.features[names[k]]["dtype"] == "video"]

    items = list(zip(range(len(eps)), eps))
    for path, group in _group(items, lambda it: meta.data_file(it[1])).items():
        where = f"episode {group[0][1]['episode_index']}" + ("" if len(group) == 1 else
                                                           f"..{group[-1][1]['episode_index']}")
        if not path.is_file():
            raise DatasetError(f"{path}: missing data file ({where})")
        try:
            have = pq.read_schema(path).names
        except Exception as e:
            raise DatasetError(f"{path}: not a readable parquet file ({where}): {type(e).__name__}: {e}") from None
        need = list(ROW_COLUMNS) + [names[k] for k in numeric + in_parquet]
        absent = [c for c in need if c not in have]
        if absent:
            raise DatasetError(f"{path}: features {absent} named in info.json are absent from the data "
                               f"({where}); columns: {have}")
        table = pq.read_table(path, columns=need)
        cols = {c: table.column(c).to_numpy() for c in ROW_COLUMNS}
        values = {k: _numeric(table, names[k], int(data[k].shape[1]), str(path)) for k in numeric}
        for i, ep in group:
            rows = _episode_rows(ep, path, cols)
            s, e = int(starts[i]), int(ends[i])
            for c in ("episode_index", "frame_index", "timestamp"):
                info[c][s:e] = cols[c][rows]
            for k in numeric:
                data[k][s:e] = torch.from_numpy(values[k][rows].astype(np.float32))
            for k in in_parquet:
                c, h, w = meta.image_chw(names[k])
                col = table.column(names[k]).combine_chunks()
                blobs, paths = col.field("bytes"), col.field("path")
                frames = np.empty((e - s, h, w, c), dtype=np.uint8)
                for j, r in enumerate(rows):
                    at = f"{path}: feature '{names[k]}', episode {ep['episode_index']} frame {j}"
                    frames[j] = decode_image(_image_bytes(meta.root, blobs[int(r)].as_py(),
                                                          paths[int(r)].as_py(), at), (h, w, c), at)
                _put_frames(data[k], s, frames)

    for k in videos:
        name = names[k]
        c, h, w = meta.image_chw(name)
        for path, group in _group(items, lambda it: meta.video_file(name, it[1])).items():
            # lerobot's rule: the frame at the episode's from_timestamp + the row's timestamp
            requests = [(ep["episode_index"], ep[f"videos/{name}/from_timestamp"]
                         + info["timestamp"][int(starts[i]):int(ends[i])].astype(np.float64)) for i, ep in group]
            for r, frames in decode_video(path, requests, (h, w, c), name):
                _put_frames(data[k], int(starts[group[r][0]]), frames)

    sim = read_sim_file(meta.root)
    buf = ReplayBuffer(data, ends, [f"episode_{ep['episode_index']}" for ep in eps],
                       env_args=sim["env_args"] if sim else None, path=str(meta.root), frame_info=info)
    if torch.device(device).type != "cpu":
        buf.to(device)
    return buf


def _image_bytes(root: Path, blob: Optional[bytes], rel: Optional[str], where: str) -> bytes:
    """The image's bytes: embedded, or read from its path (relative to the dataset root)."""
    if blob:
        return blob
    if rel:
        p = Path(rel) if Path(rel).is_absolute() else root / rel
        if p.is_file():
            return p.read_bytes()
        raise DatasetError(f"{where}: no embedded bytes and missing image file {p}")
    raise DatasetError(f"{where}: neither image bytes nor a path")
