"""Resumable training checkpoints in OUT/checkpoints/, written so that a kill at any moment leaves
the previous complete checkpoint in place.

  latest.train.pt                     everything needed to resume (model, EMA, optimizer, LR schedule,
                                      step/epoch, RNG states, batch position, log offsets, top-k list,
                                      the experiment tracker's state);
                                      this one file is the source of truth for resuming
  latest.safetensors                  the EMA policy (the model without EMA) as a dp_fast policy file
                                      (policy_file.py), for dp_fast.load_policy
  epoch=0010-val_loss=0.1234.safetensors   top-k by the monitored metric, same format

Every file goes through atomic_file.atomic_write (temporary file in the same folder, fsync, rename).
The resume state is renamed first, the policy export second: a kill between the two leaves a valid
state next to the previous export, which the resumed run overwrites. Temporary files of a killed
write are removed on the next start and never read. See docs/checkpoints.md.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..atomic_file import atomic_write
from ..policy_file import write_policy_file

LATEST_STATE = "latest.train.pt"
LATEST_POLICY = "latest.safetensors"


def write_state(state: Dict[str, Any], path: Path) -> None:
    """torch.save the resume state to `path`, atomically."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)


def _write_policy(policy, path: Path, metadata: Dict[str, str]) -> None:
    write_policy_file(path, policy.config, policy.state_dict(), metadata)


# ---------------------------------------------------------------------- RNG states (weights_only-safe)
def rng_state(device: torch.device) -> Dict[str, Any]:
    """The CPU, numpy and Python RNG states, and the CUDA one of the training device (only that one: a
    rank of a multi-GPU run must not touch the other devices)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached": float(cached)},
           "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss}}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    """rng_state's states back; the CUDA one onto `device` (a rank's device may differ from the saver's)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


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
        write_state(state, self.state_path)
        _write_policy(export_policy, self.policy_path,
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
        _write_policy(export_policy, self.dir / name, {"epoch": str(epoch), self.monitor_key: repr(value)})
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
