"""Checkpoints: dp_fast's own format and the original diffusion_policy workspace `.ckpt`.

Own format: one `.safetensors` file holding the policy state dict, with the PolicyConfig as JSON in
the safetensors metadata (key "dp_fast_config"). Written to a temporary file in the same folder and
renamed, so a reader never sees a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Union

import torch

from .config import PolicyConfig
from .original_ckpt import CheckpointError, map_original_state_dict, policy_config_from_original, read_original_checkpoint

FORMAT = "dp_fast/1"
PathLike = Union[str, os.PathLike]


def atomic_write(path: PathLike, write_fn) -> None:
    """Call write_fn(tmp_path) then rename tmp_path onto path (same folder, fsync'd)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def policy_state(policy) -> Dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in policy.state_dict().items()}


def save_policy(policy, path: PathLike, extra_metadata: Optional[Dict[str, str]] = None) -> None:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "dp_fast_config": json.dumps(policy.config.to_dict())}
    meta.update(extra_metadata or {})
    atomic_write(path, lambda tmp: save_file(policy_state(policy), tmp, metadata=meta))


def _read_own(path: Path):
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable dp_fast .safetensors checkpoint "
                              f"({path.stat().st_size} bytes): {e}") from e
    if meta.get("format") != FORMAT or "dp_fast_config" not in meta:
        raise CheckpointError(f"{path}: safetensors file without dp_fast metadata "
                              f"(expected format {FORMAT!r}, got {meta.get('format')!r})")
    return PolicyConfig.from_dict(json.loads(meta["dp_fast_config"])), state


def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "original"
    if len(head) >= 9 and head[8:9] == b"{":
        return "own"
    raise CheckpointError(f"{path}: unknown checkpoint format (expected a dp_fast .safetensors file or an "
                          f"original diffusion_policy .ckpt zip), first bytes {head[:8]!r}")


def load_policy(path: PathLike, device="cpu", backend: Optional[str] = None):
    """Load a dp_fast checkpoint or an original diffusion_policy workspace checkpoint.

    Original checkpoints are built from their own cfg and use the EMA weights when
    cfg.training.use_ema is set. Returns the policy in eval mode on `device`.
    """
    from .policy import DiffusionPolicy

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _kind(path) == "own":
        config, state = _read_own(path)
    else:
        ck = read_original_checkpoint(path)
        config = PolicyConfig(**policy_config_from_original(ck.cfg))
        name = "ema_model" if ck.use_ema and "ema_model" in ck.state_dicts else "model"
        if name not in ck.state_dicts:
            raise CheckpointError(f"{path}: state_dicts has no '{name}' entry (has {sorted(ck.state_dicts)})")
        state = map_original_state_dict(ck.state_dicts[name])
    policy = DiffusionPolicy(config, backend=backend)
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the policy built from its config: {e}") from e
    return policy.to(device).eval()
