"""dp_fast's own policy file: one `.safetensors` file, the policy's tensors plus its PolicyConfig.

The state dict (weights, buffers and the fitted normalizer) is stored as safetensors tensors; the
metadata holds "format" = FORMAT, the PolicyConfig as JSON under "dp_fast_config", and whatever
string entries the writer adds (the trainer adds epoch / step / metric). The file is written with
atomic_file.atomic_write, so a reader never sees half a file. See docs/checkpoints.md.

This module works on (config, tensors) only and does not import DiffusionPolicy: the policy's `save`
calls write_policy_file, and `dp_fast.load_policy` (dp_fast/load.py) builds the policy from what
read_policy_file returns.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import safetensors.torch
import torch
from safetensors import safe_open

from .atomic_file import atomic_write
from .config import PolicyConfig

FORMAT = "dp_fast/1"
PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, unsafe, or describes something dp_fast cannot run.

    Raised by every checkpoint reader: this module, original_format and load_policy."""


def write_policy_file(path: PathLike, config: PolicyConfig, state: Mapping[str, torch.Tensor],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write `state` (a policy's state dict) and `config` to `path`, atomically."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": FORMAT, "dp_fast_config": json.dumps(config.to_dict())}
    meta.update(metadata or {})
    with atomic_write(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=meta)


def read_policy_file(path: PathLike) -> Tuple[PolicyConfig, Dict[str, torch.Tensor]]:
    """(config, state dict) of a file written by write_policy_file; CheckpointError if it is not one."""
    path = Path(path)
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
