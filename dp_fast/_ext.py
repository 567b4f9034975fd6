"""The optional C++/CUDA extension `dp_fast._C`: loading, availability and fake implementations.

The extension registers its ops with the PyTorch dispatcher (`torch.ops.dp_fast.<name>`); this
module imports it at most once per process, remembers why it could not be imported, and registers
the fake (meta) implementations that `torch.compile` and `torch.library.opcheck` need.

Nothing here raises because the extension is missing: `available()` says whether it loaded,
`unavailable_reason()` says why not and how to fix it, `require()` raises with that text.
"""
from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

_REINSTALL = "reinstall with `pip install --no-build-isolation -e .` (torch must be installed first)"

_lock = threading.Lock()
_state: Optional[Tuple[bool, str]] = None  # (loaded, reason when not loaded)


def load() -> bool:
    """Import dp_fast._C once (later calls return the cached outcome); True when it loaded."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state[0]


def available() -> bool:
    """Whether the extension loaded (its CPU ops are then usable; CUDA ops see has_cuda_kernels())."""
    return load()


def unavailable_reason() -> str:
    """Why the extension is not available, with the fix; "" when it is."""
    load()
    return _state[1]


def require() -> None:
    """Raise RuntimeError with unavailable_reason() when the extension did not load."""
    if not load():
        raise RuntimeError(unavailable_reason())


def build_info() -> Dict[str, str]:
    """What the loaded binary was built with ({"cpu", "cuda", "openmp", "torch", "cuda_version",
    "cuda_archs"}); {} when the extension is not available."""
    if not load():
        return {}
    import torch

    text = torch.ops.dp_fast.build_info()
    return dict(item.split("=", 1) for item in text.split(";") if item)


def has_cuda_kernels() -> bool:
    """Whether the loaded extension contains CUDA kernels (it was built with a CUDA toolkit)."""
    return build_info().get("cuda") == "1"


def _load() -> Tuple[bool, str]:
    try:
        import torch  # noqa: F401  - the extension links against libtorch, which torch loads
    except ImportError as e:
        return False, f"dp_fast._C needs torch, which does not import: {e}"
    try:
        importlib.import_module("dp_fast._C")
    except ImportError as e:
        # Also covers a binary built against another torch (undefined symbol on import).
        return False, f"dp_fast._C was not built or does not load: {e}{_last_build_error()}; {_REINSTALL}"
    except OSError as e:
        return False, f"dp_fast._C does not load: {e}; {_REINSTALL}"
    try:
        _register_fakes()
    except Exception as e:  # noqa: BLE001 - an op missing from a stale binary, a torch too old, ...
        return False, (f"dp_fast._C loaded but its ops do not match this dp_fast "
                       f"({type(e).__name__}: {e}); {_REINSTALL}")
    return True, ""


def _last_build_error() -> str:
    """The failure setup.py recorded in an editable checkout's build/, if its last build failed."""
    marker = Path(__file__).resolve().parents[1] / "build" / "dp_fast_C_build_error.txt"
    try:
        text = marker.read_text().strip()
    except OSError:
        return ""
    return (f" (the last build failed: {text}; `pip install -v --no-build-isolation -e .` shows the "
            f"compiler output)")


def _register_fakes() -> None:
    """Fake (meta) implementations: output metadata without computing, for tracing and compile."""
    import torch

    @torch.library.register_fake("dp_fast::ddpm_step")
    def _ddpm_step_fake(sample, model_output, noise, table, step):
        torch._check(sample.dtype in (torch.float32, torch.bfloat16, torch.float16),
                     lambda: f"dp_fast::ddpm_step: `sample` must be float32, bfloat16 or float16, got {sample.dtype}")
        for name, t in (("model_output", model_output), ("noise", noise)):
            torch._check(t.dtype == sample.dtype,
                         lambda: f"dp_fast::ddpm_step: `{name}` must have the dtype of `sample` ({sample.dtype}), "
                                 f"got {t.dtype}")
            torch._check(t.shape == sample.shape,
                         lambda: f"dp_fast::ddpm_step: `{name}` must have the shape of `sample` "
                                 f"{list(sample.shape)}, got {list(t.shape)}")
        torch._check(table.dtype == torch.float32 and table.dim() == 2 and table.shape[1] == 10,
                     lambda: f"dp_fast::ddpm_step: `table` must be float32 (K, 10), got {table.dtype} "
                             f"{list(table.shape)}")
        torch._check(step.dtype == torch.int64 and step.dim() == 0,
                     lambda: f"dp_fast::ddpm_step: `step` must be a 0-d int64 tensor, got {step.dtype} "
                             f"{list(step.shape)}")
        return torch.empty_like(sample, memory_format=torch.contiguous_format)
