"""A LeRobotDataset v3.0 folder's metadata: `meta/info.json` (version, fps, features, path templates)
and the episode table of `meta/episodes/` (where each episode's rows and video frames are).

Layout (v3.0): `data/chunk-XXX/file-YYY.parquet` hold the rows of many episodes; each video feature
has `videos/<feature>/chunk-XXX/file-YYY.mp4` files holding many episodes one after the other; the
episode table gives, per episode, its data file, its global row range [dataset_from_index,
dataset_to_index), and per video feature its video file and time range [from_timestamp, to_timestamp).

Feature names become shape_meta keys (see docs/lerobot.md): a name that is a valid module / parameter
name is used as given; one that is not (dots, as in `observation.images.wrist`) gets a policy key with
the dots replaced by underscores, and its shape_meta entry records the dataset's name under
`dataset_key`, so that the mapping travels with the policy (its config) and predict_action accepts
either name.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ..config import SEED_SHAPE_META
from .buffer import ACTION_KEY, DatasetError

SUPPORTED_VERSION = "v3.0"
# per-row bookkeeping columns of every LeRobot dataset: never observations
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
IMAGE_DTYPES = ("video", "image")
NUMERIC_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                  "uint32")
DATASET_KEY = "dataset_key"  # shape_meta entry: the dataset's own name where the policy key differs


def pyarrow_modules():
    """(pyarrow, pyarrow.parquet), or DatasetError saying how to install them (the `lerobot` extra)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DatasetError("reading LeRobot datasets needs pyarrow: pip install -e '.[lerobot]'") from None
    return pa, pq


def is_lerobot_root(path) -> bool:
    """A folder with meta/info.json (any codebase_version: the reader refuses what it cannot read)."""
    p = Path(path)
    return p.is_dir() and (p / "meta" / "info.json").is_file()


def _module_name_ok(name: str) -> bool:
    """Whether torch accepts `name` as a ModuleDict / ParameterDict key (the obs encoder and normalizer)."""
    import torch
    from torch import nn

    if not name or "." in name:
        return False
    try:
        nn.ModuleDict({name: nn.Identity()})
        nn.ParameterDict({name: nn.Parameter(torch.zeros(1))})
    except (KeyError, TypeError, AttributeError):
        return False
    return True


def policy_keys(names: Sequence[str]) -> Dict[str, str]:
    """{dataset name: policy key}: the name itself where valid, else dots -> '_' (then '_' appended
    until the key is valid and unused). Different names always get different keys."""
    out: Dict[str, str] = {}
    taken = {n for n in names if _module_name_ok(n)} | {ACTION_KEY}
    for name in names:
        if _module_name_ok(name) and name != ACTION_KEY:
            out[name] = name
            continue
        key = name.replace(".", "_") or "_"
        while key in taken or not _module_name_ok(key):
            key += "_"
        taken.add(key)
        out[name] = key
    return out


class LeRobotMeta:
    """meta/info.json and the episode table of a LeRobotDataset v3.0 root."""

    def __init__(self, root):
        self.root = Path(root)
        self.info_path = self.root / "meta" / "info.json"
        if not self.info_path.is_file():
            raise DatasetError(f"{self.root}: not a LeRobot dataset (no meta/info.json)")
        try:
            self.info = json.loads(self.info_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{self.info_path}: not valid JSON ({e})") from None
        self.version = str(self.info.get("codebase_version", "unknown"))
        if not self.version.startswith("v3."):
            hint = (" (one file per episode; convert it to v3.0 with lerobot's "
                    "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=<id>`)"
                    if self.version.startswith("v2.") else "")
            raise DatasetError(f"{self.info_path}: LeRobotDataset codebase_version {self.version} is not supported; "
                               f"dp_fast reads {SUPPORTED_VERSION}{hint}")
        for k in ("features", "fps", "data_path"):
            if k not in self.info:
                raise DatasetError(f"{self.info_path}: no '{k}' entry")
        self.features: Dict[str, Dict[str, Any]] = dict(self.info["features"])
        self.fps = float(self.info["fps"])
        if ACTION_KEY not in self.features:
            raise DatasetError(f"{self.info_path}: no '{ACTION_KEY}' feature; features: {list(self.features)}")
        self.episodes = self._read_episodes()

    # ------------------------------------------------------------------ features
    def kind(self, name: str) -> Optional[str]:
        """'video' / 'image' / 'low_dim' for a usable feature, None for others (strings, bookkeeping)."""
        f = self.features[name]
        dtype = f.get("dtype")
        if dtype in IMAGE_DTYPES:
            return dtype
        if name in BOOKKEEPING or name == ACTION_KEY or dtype not in NUMERIC_DTYPES:
            return None
        return "low_dim" if len(f.get("shape", ())) == 1 else None

    def video_keys(self) -> List[str]:
        return [n for n in self.features if self.features[n].get("dtype") == "video"]

    def image_chw(self, name: str) -> List[int]:
        """[C, H, W] of an image / video feature (info.json stores (H, W, C); names may say otherwise)."""
        f = self.features[name]
        shape = [int(s) for s in f["shape"]]
        if len(shape) != 3:
            raise DatasetError(f"{self.info_path}: feature '{name}': image shape must have 3 entries, got {shape}")
        if list(f.get("names") or [])[:1] == ["channels"]:
            return shape
        h, w, c = shape
        return [c, h, w]

    def shape_meta(self, obs_keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """shape_meta for the policy. obs_keys: dataset names or policy keys, in order; default the
        seed's keys where the dataset has them (a copy of a robomimic file), else every image / video
        and 1-d numeric feature except `action`, the bookkeeping columns and `next.*` (rewards, dones)."""
        usable = [n for n in self.features if self.kind(n) is not None]
        keys = policy_keys(usable)
        by_key = {keys[n]: n for n in usable}
        if obs_keys is None:
            seed = [k for k in SEED_SHAPE_META["obs"] if k in usable]
            names = seed or [n for n in usable if not n.startswith("next.")]
        else:
            names = []
            for k in obs_keys:
                name = k if k in keys else by_key.get(k)
                if name is None:
                    raise DatasetError(f"{self.info_path}: obs key '{k}' is not a usable feature (image, video or "
                                       f"1-d numeric); usable: {usable}")
                names.append(name)
        if not names:
            raise DatasetError(f"{self.info_path}: no usable observation features; features: {list(self.features)}")
        obs: Dict[str, Any] = {}
        for name in names:
            entry: Dict[str, Any]
            if self.kind(name) in IMAGE_DTYPES:
                entry = {"shape": self.image_chw(name), "type": "rgb"}
            else:
                entry = {"shape": [int(self.features[name]["shape"][0])]}
            if keys[name] != name:
                entry[DATASET_KEY] = name
            obs[keys[name]] = entry
        act = [int(s) for s in self.features[ACTION_KEY].get("shape", ())]
        if len(act) != 1:
            raise DatasetError(f"{self.info_path}: feature '{ACTION_KEY}' must be 1-d, got shape {act}")
        return {"obs": obs, "action": {"shape": act}}

    # ------------------------------------------------------------------ episodes and files
    def _episode_columns(self) -> List[str]:
        cols = ["episode_index", "length", "data/chunk_index", "data/file_index", "dataset_from_index",
                "dataset_to_index"]
        for key in self.video_keys():
            cols += [f"videos/{key}/{c}" for c in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        return cols

    def _read_episodes(self) -> List[Dict[str, Any]]:
        _, pq = pyarrow_modules()
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{self.root}: no episode table (meta/episodes/chunk-*/file-*.parquet)")
        cols = self._episode_columns()
        rows: List[Dict[str, Any]] = []
        for path in files:
            try:
                names = pq.read_schema(path).names
                missing = [c for c in cols if c not in names]
                if missing:
                    raise DatasetError(f"{path}: episode table lacks columns {missing}")
                table = pq.read_table(path, columns=cols).to_pydict()
            except DatasetError:
                raise
            except Exception as e:  # pyarrow's errors for unreadable files
                raise DatasetError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
            n = len(table["episode_index"])
            rows += [{c: table[c][i] for c in cols} for i in range(n)]
        rows.sort(key=lambda r: r["episode_index"])
        seen = [r["episode_index"] for r in rows]
        if len(set(seen)) != len(seen):
            raise DatasetError(f"{self.root}/meta/episodes: an episode index appears twice")
        total = self.info.get("total_episodes")
        if total is not None and int(total) != len(rows):
            raise DatasetError(f"{self.root}: info.json says total_episodes={total}, meta/episodes lists {len(rows)}")
        for r in rows:
            if r["dataset_to_index"] - r["dataset_from_index"] != r["length"] or r["length"] < 1:
                raise DatasetError(f"{self.root}/meta/episodes: episode {r['episode_index']}: length {r['length']} "
                                   f"but rows [{r['dataset_from_index']}, {r['dataset_to_index']})")
        return rows

    def data_file(self, ep: Mapping[str, Any]) -> Path:
        return self.root / self.info["data_path"].format(chunk_index=ep["data/chunk_index"],
                                                        file_index=ep["data/file_index"])

    def video_file(self, key: str, ep: Mapping[str, Any]) -> Path:
        template = self.info.get("video_path")
        if not template:
            raise DatasetError(f"{self.info_path}: feature '{key}' is a video but info.json has no video_path")
        return self.root / template.format(video_key=key, chunk_index=ep[f"videos/{key}/chunk_index"],
                                           file_index=ep[f"videos/{key}/file_index"])
