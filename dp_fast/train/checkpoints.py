"""Resumable training checkpoints in OUT/checkpoints/, written so that a kill at any moment leaves
the previous complete checkpoint in place.

  latest.train.pt                     everything needed to resume (model, EMA, optimizer, LR schedule,
                                      step/epoch, RNG states, batch position, log offsets, top-k list);
                                      this one file is the source of truth for resuming
  latest.safetensors                  the EMA policy (the model without EMA) in dp_fast's own format,
                                      for dp_fast.load_policy
  epoch=0010-val_loss=0.1234.safetensors   top-k by the monitored metric, same format

Every file is written to a temporary name in the same folder, fsync'd, then os.replace'd (atomic on
POSIX). The resume state is renamed first, the policy export second: a kill between the two leaves a
valid state next to the previous export, which the resumed run overwrites. Temporary files of a killed
write are removed on the next start and never read.

Test hook: DP_FAST_TRAIN_TEST_KILL="step:N" SIGKILLs the process after batch N was trained and logged
(before any checkpoint of that step); "save:N" SIGKILLs it during the N-th resume-state write of the
process, between the temporary file and its rename.
"""
from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..checkpoint import save_policy

LATEST_STATE = "latest.train.pt"
LATEST_POLICY = "latest.safetensors"
_save_count = 0


def test_kill(event: str, n: int) -> None:
    """SIGKILL this process when DP_FAST_TRAIN_TEST_KILL == f'{event}:{n}' (tests only)."""
    if os.environ.get("DP_FAST_TRAIN_TEST_KILL") == f"{event}:{n}":
        os.kill(os.getpid(), signal.SIGKILL)


def atomic_torch_save(obj: Any, path: Path) -> None:
    global _save_count
    _save_count += 1
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        test_kill("save", _save_count)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- RNG states (weights_only-safe)
def rng_state() -> Dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached": float(cached)},
           "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- manager
def _fmt_metric(v: float) -> str:
    return f"{v:.4f}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


class CheckpointManager:
    def __init__(self, out_dir, monitor_key: Optional[str] = None, mode: str = "min", k: int = 5):
        self.dir = Path(out_dir) / "checkpoints"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.monitor_key, self.mode, self.k = monitor_key, mode, int(k)
        self.topk: List[Tuple[float, str]] = []  # (metric, file name), kept in the resume state
        for stale in self.dir.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a killed write; never read

    @property
    def state_path(self) -> Path:
        return self.dir / LATEST_STATE

    @property
    def policy_path(self) -> Path:
        return self.dir / LATEST_POLICY

    def has_state(self) -> bool:
        return self.state_path.is_file()

    def load_state(self) -> Dict[str, Any]:
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.topk = [(float(m), str(n)) for m, n in state.get("topk", [])]
        return state

    def save(self, state: Dict[str, Any], export_policy) -> None:
        """state: the resume dict (top-k list added here); export_policy: the policy written for load_policy."""
        state = dict(state, topk=[[m, n] for m, n in self.topk])
        atomic_torch_save(state, self.state_path)
        save_policy(export_policy, self.policy_path,
                    {"epoch": str(state.get("epoch")), "global_step": str(state.get("global_step"))})

    def update_topk(self, epoch: int, metrics: Dict[str, Any], export_policy) -> Optional[str]:
        """Write `epoch=EEEE-<key>=<value>.safetensors` if the metric is among the k best; drop the worst."""
        if self.k <= 0 or self.monitor_key is None or metrics.get(self.monitor_key) is None:
            return None
        value = float(metrics[self.monitor_key])
        name = f"epoch={epoch:04d}-{self.monitor_key}={_fmt_metric(value)}.safetensors"
        sign = 1.0 if self.mode == "min" else -1.0
        cand = sorted(self.topk + [(value, name)], key=lambda t: (sign * t[0], t[1]))
        keep, drop = cand[:self.k], cand[self.k:]
        if (value, name) not in keep:
            return None
        save_policy(export_policy, self.dir / name, {"epoch": str(epoch), self.monitor_key: repr(value)})
        for _, old in drop:
            if old != name:
                (self.dir / old).unlink(missing_ok=True)
        self.topk = keep
        return name

    def clear(self) -> None:
        """Start over (training.resume=False): remove the resume state, the export and the top-k files."""
        for p in [self.state_path, self.policy_path, *self.dir.glob("epoch=*.safetensors")]:
            p.unlink(missing_ok=True)
        self.topk = []
