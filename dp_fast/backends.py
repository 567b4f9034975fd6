"""Backend names, availability and selection (ARCHITECTURE.md, Backends).

Names: "reference" (pure PyTorch), "triton", "cpu" (C++ CPU extension), "cuda" (C++/CUDA extension),
"auto" (the fastest available for the device). Choice, first that is set: the call's `backend=`, the
policy's backend, $DP_FAST_BACKEND, "auto". An explicitly named backend that cannot run raises
BackendUnavailable saying why and how to fix it; only "auto" falls back.

Two questions are answered here:
  * `resolve_policy_backend(name, device)`: which backend a DiffusionPolicy runs (dp_fast.sampling);
  * `resolve_op_backend(op, backend, device_type)`: which implementation one op of dp_fast.ops runs
    for tensors on `device_type` (the op dispatchers and policy.describe_backends()).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

NAMES = ("reference", "triton", "cpu", "cuda", "auto")
OPS = ("ddpm_step", "add_noise", "random_crop")
ENV_VAR = "DP_FAST_BACKEND"

_REBUILD = "reinstall with `pip install --no-build-isolation -e .`"
_triton_import: Optional[Tuple[bool, str]] = None  # (imports, error) cached: importing triton is slow


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why and how to fix it."""


def _triton_imports() -> Tuple[bool, str]:
    global _triton_import
    if _triton_import is None:
        try:
            import triton  # noqa: F401
            _triton_import = (True, "")
        except Exception as e:  # noqa: BLE001 - a broken install is "unavailable", not a crash
            _triton_import = (False, f"{type(e).__name__}: {e}")
    return _triton_import


def triton_interpreter() -> bool:
    """Whether Triton kernels run in the CPU interpreter (TRITON_INTERPRET=1, read when kernels are imported)."""
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


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
    from . import _ext
    if _ext.load():
        return True, "C++ CPU extension dp_fast._C"
    return False, _ext.unavailable_reason()


def _cuda_status() -> Tuple[bool, str]:
    from . import _ext
    if not _ext.load():
        return False, _ext.unavailable_reason()
    if not _has_cuda_kernels():
        return False, (f"dp_fast._C was built without CUDA kernels ({_ext.build_info()}); with a CUDA build of "
                       f"torch and nvcc (CUDA_HOME), {_REBUILD}")
    if not _cuda_available():
        return False, "torch.cuda.is_available() is False (no CUDA device or driver)"
    return True, "C++/CUDA extension dp_fast._C"


_cuda_kernels: Optional[bool] = None


def _has_cuda_kernels() -> bool:
    """_ext.has_cuda_kernels(), cached: the loaded binary cannot change, and its answer comes from a
    string-returning op that torch.compile cannot trace (ops dispatch through this module)."""
    global _cuda_kernels
    if _cuda_kernels is None:
        from . import _ext
        _cuda_kernels = _ext.has_cuda_kernels()
    return _cuda_kernels


_STATUS = {"triton": _triton_status, "cpu": _cpu_status, "cuda": _cuda_status}


def backends() -> Dict[str, Dict[str, object]]:
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


def _requested(name: Optional[str]) -> str:
    name = name or os.environ.get(ENV_VAR) or "auto"
    if name not in NAMES:
        raise ValueError(f"backend must be one of {list(NAMES)} (or None: ${ENV_VAR}, then 'auto'), got {name!r}")
    return name


def _device_type(device) -> str:
    if isinstance(device, str):
        return device.split(":", 1)[0]
    return getattr(device, "type", str(device))


def _unavailable(name: str, reason: str) -> BackendUnavailable:
    return BackendUnavailable(f"backend {name!r} is not available: {reason}. Use backend='auto' (or unset "
                              f"${ENV_VAR}) to fall back to what is available; dp_fast.backends() lists them.")


def resolve_policy_backend(name: Optional[str], device="cpu") -> str:
    """The backend a policy on `device` ("cpu", "cuda" or a torch.device) runs.

    name None -> $DP_FAST_BACKEND -> "auto". "auto": on CPU "cpu" when the C++ sampler loop
    (dp_fast.sampling_cpu) is available, else "reference"; on CUDA "cuda", else "triton", else
    "reference". A named backend that is unavailable raises BackendUnavailable; an unknown name ValueError.
    The device of a named backend is not checked here: the policy may still be moved (the sampler checks).
    """
    name = _requested(name)
    dev = _device_type(device)
    info = backends()
    if name == "auto":
        if dev == "cuda":
            # under TRITON_INTERPRET=1 without a GPU "triton" is available, but not for a CUDA device
            for cand in ("cuda", "triton"):
                if info[cand]["available"] and _cuda_available():
                    return cand
            return "reference"
        return "cpu" if _sampler_cpu_status()[0] else "reference"
    if not info[name]["available"]:
        raise _unavailable(name, str(info[name]["reason"]))
    if name == "cpu":
        ok, why = _sampler_cpu_status()
        if not ok:
            raise _unavailable(name, why)
    return name


def _sampler_cpu_status() -> Tuple[bool, str]:
    try:
        from . import sampling_cpu
    except ImportError as e:
        return False, f"dp_fast.sampling_cpu does not import: {e}"
    return sampling_cpu.available()


def resolve_op_backend(op: str, backend: Optional[str], device_type) -> str:
    """The implementation one op of dp_fast.ops runs for tensors on `device_type` ("cpu" or "cuda").

    backend None -> $DP_FAST_BACKEND -> "auto". "auto": on CUDA "cuda", else "triton", else "reference";
    on CPU "cpu", else "reference" (the Triton interpreter is never chosen automatically: it is slow).
    A named backend that cannot run there raises BackendUnavailable: "cpu" on CUDA tensors, "cuda" on
    CPU tensors, "triton" on CPU tensors without TRITON_INTERPRET=1.
    """
    if op not in OPS:
        raise ValueError(f"op must be one of {list(OPS)}, got {op!r}")
    name = _requested(backend)
    dev = _device_type(device_type)
    if dev not in ("cpu", "cuda"):
        raise BackendUnavailable(f"{op}: tensors on device type {dev!r} are not supported (only cpu and cuda)")
    if name == "reference":
        return name
    # only the statuses needed, not backends(): this runs on every op call, also inside torch.compile
    if name == "auto":
        if dev == "cuda" and not _cuda_available():
            return "reference"
        order = ("cuda", "triton") if dev == "cuda" else ("cpu",)
        return next((c for c in order if _STATUS[c]()[0]), "reference")
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
