"""Argument checks and backend plumbing shared by the op dispatchers.

Checks read only tensor metadata (never values), so a dispatcher never synchronises with the device.
Errors name the op, the argument, what was expected and what was given.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional, Sequence

import torch

from ..backends import resolve_op_backend

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16",
                torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.uint8: "uint8",
                torch.bool: "bool"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def names(dtypes: Iterable[torch.dtype]) -> str:
    d = [dtype_name(t) for t in dtypes]
    return d[0] if len(d) == 1 else ", ".join(d[:-1]) + " or " + d[-1]


def check_tensor(op: str, name: str, t, dtypes: Sequence[torch.dtype], shape: Optional[Sequence] = None,
                 device: Optional[torch.device] = None, device_of: str = "") -> None:
    """t is a tensor with a dtype in `dtypes`, `shape` (None entries: any size) and on `device`."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{op}: `{name}` must be {names(dtypes)}, got {dtype_name(t.dtype)}")
    if shape is not None and (t.dim() != len(shape) or any(s is not None and s != g for s, g in zip(shape, t.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{op}: `{name}` must have shape {want}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{op}: `{name}` must be on the device of `{device_of}` ({device}), got {t.device}")


def check_like(op: str, name: str, t, ref: torch.Tensor, ref_name: str) -> None:
    """t has ref's dtype, shape and device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a tensor, got {type(t).__name__}")
    if t.dtype != ref.dtype:
        raise TypeError(f"{op}: `{name}` must have the dtype of `{ref_name}` ({dtype_name(ref.dtype)}), "
                        f"got {dtype_name(t.dtype)}")
    if t.shape != ref.shape:
        raise ValueError(f"{op}: `{name}` must have the shape of `{ref_name}` {tuple(ref.shape)}, got {tuple(t.shape)}")
    if t.device != ref.device:
        raise ValueError(f"{op}: `{name}` must be on the device of `{ref_name}` ({ref.device}), got {t.device}")


def check_contiguous(op: str, backend: str, **tensors: torch.Tensor) -> None:
    """The fast kernels index flat memory: they need contiguous (row-major) inputs."""
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{op}: backend {backend!r} needs `{name}` contiguous, got shape {tuple(t.shape)} with "
                             f"strides {t.stride()}; pass `{name}.contiguous()` or use backend='reference'")


def resolve(op: str, backend: Optional[str], device: torch.device) -> str:
    """The backend to run (dp_fast.backends.resolve_op_backend); raises when a named one cannot run."""
    return resolve_op_backend(op, backend, device.type)


def device_guard(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()
