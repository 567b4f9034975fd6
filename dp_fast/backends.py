"""Which implementation runs: backend names, their availability, and every backend decision of dp_fast.

Names: "reference" (plain PyTorch, the ground truth), "cpu" (the C++ CPU extension), "cuda" (the
C++/CUDA extension), "triton" (Triton kernels; on CPU tensors only in the interpreter), "auto" (the
fastest available for the device). The request, first that is set: the `backend=` argument,
$DP_FAST_BACKEND, "auto". A named backend that cannot run raises BackendUnavailable saying why and how
to fix it; only "auto" falls back.

Two decisions are made here and nowhere else (docs/architecture.md, "Backends"):
  * `resolve(name, device)`: what a DiffusionPolicy on `device` runs, as one `Resolution` (the policy
    backend, its sampler and the backend of every op). The policy calls it once per device change.
  * `resolve_op_backend(op, name, device)`: which implementation one op of dp_fast.ops runs for
    tensors on `device` (the op dispatchers call it; it reads no tensor values, so it never syncs).

This module imports only the extension loader (and triton, lazily: importing it is slow).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from . import _ext

NAMES = ("reference", "triton", "cpu", "cuda", "auto")
# op -> the backends that implement it (besides "reference", which every op has)
OPS: Dict[str, Tuple[str, ...]] = {
    "ddpm_step": ("cpu", "cuda", "triton"),
    "add_noise": ("cpu", "cuda", "triton"),
    "random_crop": ("cpu", "cuda", "triton"),
    "attention": ("triton",),
}
ENV_VAR = "DP_FAST_BACKEND"

# What predict_action's K-step loop runs, by sampler kind (dp_fast.sampling builds them).
SAMPLERS = {
    "reference": "the plain-PyTorch K-step loop (dp_fast/sampling/reference.py, the ground truth)",
    "cpu": "the whole loop in one C++ op, dp_fast::sampler_loop (dp_fast/sampling/cpu.py)",
    "cuda_graph": "precomputing denoiser loop captured once per (batch, K) in a CUDA graph and replayed "
                  "(dp_fast/sampling/graph.py)",
    "eager": "the CUDA-graph sampler's loop run uncaptured (dp_fast/sampling/graph.py)",
}

# What predict_action's observation encoder runs (DiffusionPolicy.encode_obs).
ENCODERS = {
    "reference": "the plain-PyTorch ResNets (dp_fast/models/vision.py)",
    "onednn": "the ResNets' convolutions through oneDNN with weights packed once per batch size, channels_last "
              "(dp_fast/models/vision_onednn.py)",
}

_REBUILD = "reinstall with `pip install --no-build-isolation -e .`"
_triton_import: Optional[Tuple[bool, str]] = None  # (imports, error), cached
_cuda_kernels: Optional[bool] = None


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why and how to fix it."""


# ------------------------------------------------------------------------------------ availability
def _triton_imports() -> Tuple[bool, str]:
    global _triton_import
    if _triton_import is None:
        try:
            import triton  # noqa: F401  (optional dependency, imported only when asked about)
            _triton_import = (True, "")
        except Exception as e:  # noqa: BLE001 - a broken install is "unavailable", not a crash
            _triton_import = (False, f"{type(e).__name__}: {e}")
    return _triton_import


def triton_interpreter() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1, read when kernels are imported)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _has_cuda_kernels() -> bool:
    """_ext.has_cuda_kernels(), cached: the loaded binary cannot change, and the answer comes from a
    string-returning op that torch.compile cannot trace (ops dispatch through this module)."""
    global _cuda_kernels
    if _cuda_kernels is None:
        _cuda_kernels = _ext.has_cuda_kernels()
    return _cuda_kernels


def _triton_status() -> Tuple[bool, str]:
    ok, err = _triton_imports()
    if not ok:
        return False, f"triton does not import ({err}); install it: pip install 'triton>=3.6'"
    if _cuda_available():
        return True, "compiled for the CUDA device"
    if triton_interpreter():
        return True, "interpreter, slow (TRITON_INTERPRET=1, CPU tensors)"
    return False, ("no CUDA device, and TRITON_INTERPRET=1 is not set (set it before dp_fast.kernels is "
                   "imported to run the kernels in the slow CPU interpreter)")


def _cpu_status() -> Tuple[bool, str]:
    if _ext.load():
        return True, "C++ CPU extension dp_fast._C"
    return False, _ext.unavailable_reason()


def _cuda_status() -> Tuple[bool, str]:
    if not _ext.load():
        return False, _ext.unavailable_reason()
    if not _has_cuda_kernels():
        return False, (f"dp_fast._C was built without CUDA kernels ({_ext.build_info()}); with a CUDA build of "
                       f"torch and nvcc (CUDA_HOME), {_REBUILD}")
    if not _cuda_available():
        return False, "torch.cuda.is_available() is False (no CUDA device or driver)"
    return True, "C++/CUDA extension dp_fast._C"


_STATUS = {"triton": _triton_status, "cpu": _cpu_status, "cuda": _cuda_status}


def available_backends() -> Dict[str, Dict[str, object]]:
    """{name: {"available": bool, "reason": str}} for every name in NAMES.

    "reason" says what the backend runs on when available and why not (with the fix) otherwise.
    """
    out = {"reference": {"available": True, "reason": "pure PyTorch, always available"}}
    for name, status in _STATUS.items():
        ok, reason = status()
        out[name] = {"available": ok, "reason": reason}
    out["auto"] = {"available": True, "reason": f"fastest available for the device (${ENV_VAR} or backend= "
                                                f"to choose)"}
    return out


# ------------------------------------------------------------------------------------ resolution
def requested(name: Optional[str]) -> str:
    """The backend asked for: `name`, else $DP_FAST_BACKEND, else "auto"; an unknown name raises ValueError."""
    name = name or os.environ.get(ENV_VAR) or "auto"
    if name not in NAMES:
        raise ValueError(f"backend must be one of {list(NAMES)} (or None: ${ENV_VAR}, then 'auto'), got {name!r}")
    return name


def device_type(device) -> str:
    """"cpu" / "cuda" / ... of a torch.device, a device string ("cuda:1") or a device type."""
    if isinstance(device, str):
        return device.split(":", 1)[0]
    return getattr(device, "type", str(device))


def _unavailable(name: str, reason: str) -> BackendUnavailable:
    return BackendUnavailable(f"backend {name!r} is not available: {reason}. Use backend='auto' (or unset "
                              f"${ENV_VAR}) to fall back to what is available; dp_fast.available_backends() "
                              f"lists them.")


def resolve_op_backend(op: str, backend: Optional[str], device) -> str:
    """The implementation one op of dp_fast.ops runs for tensors on `device` ("cpu", "cuda", a torch.device).

    backend None -> $DP_FAST_BACKEND -> "auto". "auto": on CUDA "cuda", else "triton", else "reference";
    on CPU "cpu", else "reference" (the Triton interpreter is never chosen automatically: it is slow),
    among the backends that implement `op` (OPS). A named backend that cannot run there raises
    BackendUnavailable: one the op does not have, "cpu" on CUDA tensors, "cuda" on CPU tensors, "triton"
    on CPU tensors without TRITON_INTERPRET=1, or one that is not available on this machine.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    name = requested(backend)
    dev = device_type(device)
    if dev not in ("cpu", "cuda"):
        raise BackendUnavailable(f"{op}: tensors on device type {dev!r} are not supported (only cpu and cuda)")
    if name == "reference":
        return name
    impls = OPS[op]
    # only the statuses needed, not available_backends(): this runs on every op call
    if name == "auto":
        if dev == "cuda" and not _cuda_available():
            return "reference"
        order = ("cuda", "triton") if dev == "cuda" else ("cpu",)
        return next((c for c in order if c in impls and _STATUS[c]()[0]), "reference")
    if name not in impls:
        raise BackendUnavailable(f"{op}: there is no {name!r} implementation (it has {['reference', *impls]}); use "
                                 f"backend='auto' or 'reference'")
    if name == "cpu" and dev != "cpu":
        raise BackendUnavailable(f"{op}: backend 'cpu' runs C++ CPU kernels, but the tensors are on {dev}; use "
                                 f"backend='cuda', 'triton' or 'auto' for CUDA tensors")
    if name == "cuda" and dev != "cuda":
        raise BackendUnavailable(f"{op}: backend 'cuda' runs CUDA kernels, but the tensors are on {dev}; use "
                                 f"backend='cpu' or 'auto' for CPU tensors")
    if name == "triton" and dev == "cpu" and not triton_interpreter():
        raise BackendUnavailable(f"{op}: backend 'triton' on CPU tensors needs the Triton interpreter "
                                 f"(TRITON_INTERPRET=1 before dp_fast.kernels is imported; slow); use "
                                 f"backend='cpu' or 'auto' for CPU tensors")
    ok, reason = _STATUS[name]()
    if not ok:
        raise _unavailable(name, reason)
    return name


@dataclass(frozen=True)
class Resolution:
    """What a policy on `device` runs: its backend, the sampler kind (a SAMPLERS key), the observation
    encoder (an ENCODERS key, for inference; training runs the reference) and each op's backend."""

    backend: str
    device: torch.device
    sampler: str
    encoder: str
    ops: Dict[str, str]


def policy_backend(name: Optional[str], device="cpu") -> str:
    """The backend a policy on `device` runs for request `name` (None -> $DP_FAST_BACKEND -> "auto").

    "auto": on CPU "cpu" when the extension is built, else "reference"; on CUDA "cuda", else "triton",
    else "reference". A named backend that is unavailable on this machine raises BackendUnavailable, an
    unknown name ValueError. Whether it can run on `device` is checked by `resolve` (a policy may be
    built on the CPU with backend="cuda" and then moved).
    """
    name = requested(name)
    dev = device_type(device)
    if name == "auto":
        if dev == "cuda":
            # under TRITON_INTERPRET=1 without a GPU "triton" is available, but not for a CUDA device
            if not _cuda_available():
                return "reference"
            return next((c for c in ("cuda", "triton") if _STATUS[c]()[0]), "reference")
        return "cpu" if _STATUS["cpu"]()[0] else "reference"
    if name != "reference":
        ok, reason = _STATUS[name]()
        if not ok:
            raise _unavailable(name, reason)
    return name


def _sampler_kind(backend: str, dev: str) -> str:
    if backend == "reference":
        return "reference"
    if backend == "cpu":
        if dev != "cpu":
            raise BackendUnavailable(f"backend 'cpu' runs the C++ CPU loop, but the policy is on {dev}; use "
                                     f"backend='cuda', 'triton' or 'auto' there")
        return "cpu"
    if dev == "cuda":
        return "cuda_graph"
    if backend == "cuda":
        raise BackendUnavailable(f"backend 'cuda' needs the policy on a CUDA device, it is on {dev}; use "
                                 f"backend='cpu' or 'auto' on the CPU")
    return "eager"  # triton on a CPU policy (TRITON_INTERPRET=1): the graph sampler's loop, uncaptured


def _encoder_kind(backend: str, dev: str) -> str:
    """"onednn" under the cpu backend where torch's oneDNN ops are there ($DP_FAST_CPU_ENCODER=reference
    turns it off), else "reference"."""
    if backend != "cpu" or dev != "cpu" or os.environ.get("DP_FAST_CPU_ENCODER", "") == "reference":
        return "reference"
    return "onednn" if onednn_status()[0] else "reference"


def onednn_status() -> Tuple[bool, str]:
    """(usable, reason) of the "onednn" encoder: torch's oneDNN build and the two ops it calls."""
    if not torch.backends.mkldnn.is_available():
        return False, "torch was built without oneDNN (torch.backends.mkldnn.is_available() is False)"
    for op in ("_reorder_convolution_weight", "_convolution_pointwise"):
        if not hasattr(torch.ops.mkldnn, op):
            return False, f"this torch has no torch.ops.mkldnn.{op}"
    return True, "oneDNN convolutions with packed weights, channels_last"


def op_backends(backend: str, device) -> Dict[str, str]:
    """Each op's backend under policy backend `backend` (already resolved) on `device`: that backend where
    the op has it, else what "auto" picks for the op (attention under "cpu": reference)."""
    return {op: backend if backend in ("reference", *impls) else resolve_op_backend(op, "auto", device)
            for op, impls in OPS.items()}


def resolve(name: Optional[str], device="cpu") -> Resolution:
    """The Resolution of backend request `name` for a policy on `device`: policy_backend, then its sampler
    (raising BackendUnavailable where that backend cannot run on `device`), then op_backends."""
    dev = torch.device(device)
    backend = policy_backend(name, dev)
    sampler = _sampler_kind(backend, dev.type)
    return Resolution(backend=backend, device=dev, sampler=sampler, encoder=_encoder_kind(backend, dev.type),
                      ops=op_backends(backend, dev))
