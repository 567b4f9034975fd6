"""`dp_fast.load_policy`: a DiffusionPolicy from either checkpoint format, told apart by its first bytes.

  dp_fast's own `.safetensors` policy file  -> policy_file.read_policy_file
  the original workspace `.ckpt` (a zip)    -> original_format.read_original_policy

Both give (PolicyConfig, state dict); the policy is built from the config and must take the weights
strictly. This module sits above policy.py (it builds the policy); the format modules do not import
the policy, so there is no import cycle. See docs/checkpoints.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .original_format import read_original_policy
from .policy import DiffusionPolicy
from .policy_file import CheckpointError, PathLike, read_policy_file


def _kind(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":  # a zip archive: torch.save's format
        return "original"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then the JSON header
        return "own"
    raise CheckpointError(f"{path}: unknown checkpoint format (expected a dp_fast .safetensors file or an "
                          f"original diffusion_policy .ckpt zip), first bytes {head[:8]!r}")


def load_policy(path: PathLike, device="cpu", backend: Optional[str] = None) -> DiffusionPolicy:
    """Load a dp_fast checkpoint or an original diffusion_policy workspace checkpoint.

    Original checkpoints are built from their own cfg and use the EMA weights when
    cfg.training.use_ema is set. Returns the policy in eval mode on `device`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    config, state = read_policy_file(path) if _kind(path) == "own" else read_original_policy(path)
    policy = DiffusionPolicy(config, backend=backend)
    try:
        policy.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the policy built from its config: {e}") from e
    return policy.to(device).eval()
