"""NVTX ranges for profiling with Nsight Systems, at no cost when nobody is profiling.

    from dp_fast.profiling import nvtx_range
    with nvtx_range("sample"):
        ...

`nvtx_range(name)` returns one shared no-op context manager unless profiling is on, so a hot loop pays a
function call and a check, nothing else. Profiling is on when DP_FAST_NVTX=1 (or true / on / yes), or when
the process runs under Nsight Systems (it sets NSYS_PROFILING_SESSION_ID). The decision is taken on the
first call and kept for the process; `set_nvtx(True / False / None)` overrides it (None: decide from the
environment again).

Where the ranges go, first that works:
  1. the PyPI `nvtx` package (`nvtx.annotate`, domain "dp_fast"), when it imports;
  2. `torch.cuda.nvtx.range_push / range_pop`, when torch has CUDA and a device is visible (the GPU
     machines have no PyPI `nvtx`; torch's CUDA builds carry NVTX themselves);
  3. nothing: ranges are asked for but cannot be emitted, so they stay no-ops (`nvtx_backend()` says so).
Range names are prefixed with "dp_fast/".
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, ContextManager, Optional

ENV_VAR = "DP_FAST_NVTX"
_NULL = contextlib.nullcontext()

_forced: Optional[bool] = None
_decided = False
_factory: Optional[Callable[[str], ContextManager]] = None  # None: ranges are no-ops
_backend = "off"


class _TorchRange:
    """push on enter, pop on exit, through torch.cuda.nvtx."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        import torch
        torch.cuda.nvtx.range_push(self.name)
        return self

    def __exit__(self, *exc):
        import torch
        torch.cuda.nvtx.range_pop()
        return False


def _wanted() -> bool:
    if _forced is not None:
        return _forced
    return (os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "on", "yes")
            or "NSYS_PROFILING_SESSION_ID" in os.environ)


def _decide() -> None:
    global _decided, _factory, _backend
    _decided, _factory, _backend = True, None, "off"
    if not _wanted():
        return
    try:
        import nvtx  # optional: not a dependency, absent on the GPU machines
    except ImportError:
        nvtx = None
    if nvtx is not None:
        _factory = lambda name: nvtx.annotate(f"dp_fast/{name}", domain="dp_fast")  # noqa: E731
        _backend = "nvtx"
        return
    try:
        import torch
        if torch.cuda.is_available():
            _factory = lambda name: _TorchRange(f"dp_fast/{name}")  # noqa: E731
            _backend = "torch.cuda.nvtx"
            return
    except Exception:  # noqa: BLE001 - a broken torch means no ranges, never a failed call
        pass
    _backend = "unavailable (neither the nvtx package nor a CUDA build of torch with a device)"


def set_nvtx(enabled: Optional[bool]) -> None:
    """Force ranges on (True) or off (False); None: decide from the environment on the next call."""
    global _forced, _decided
    _forced = enabled
    _decided = False


def nvtx_enabled() -> bool:
    """Whether nvtx_range() emits ranges in this process."""
    if not _decided:
        _decide()
    return _factory is not None


def nvtx_backend() -> str:
    """"nvtx", "torch.cuda.nvtx", "off" (not profiling) or "unavailable (...)"."""
    if not _decided:
        _decide()
    return _backend


def nvtx_range(name: str) -> ContextManager:
    """A range named dp_fast/<name> while profiling, else a shared no-op context manager."""
    if not _decided:
        _decide()
    if _factory is None:
        return _NULL
    return _factory(name)
