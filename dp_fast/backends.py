"""Backend names and selection (ARCHITECTURE.md, Backends).

Choice, first that is set: the call's backend=, the policy's backend, $DP_FAST_BACKEND, "auto".
"""
from __future__ import annotations

import os
from typing import Dict, Optional

NAMES = ("reference", "triton", "cpu", "cuda", "auto")


class BackendUnavailable(RuntimeError):
    pass


def backends() -> Dict[str, Dict[str, object]]:
    """{name: {"available": bool, "reason": str}} for every backend."""
    return {"reference": {"available": True, "reason": "pure PyTorch, always available"}}


def resolve_policy_backend(name: Optional[str]) -> str:
    name = name or os.environ.get("DP_FAST_BACKEND") or "auto"
    if name not in NAMES:
        raise ValueError(f"backend must be one of {list(NAMES)}, got {name!r}")
    if name == "auto":
        return "reference"
    info = backends().get(name)
    if info is None or not info["available"]:
        reason = "not implemented yet" if info is None else info["reason"]
        raise BackendUnavailable(f"backend {name!r} is not available: {reason}")
    return name
