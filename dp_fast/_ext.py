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

    @torch.library.register_fake("dp_fast::add_noise")
    def _add_noise_fake(x0, noise, timesteps, alphas_cumprod):
        torch._check(x0.dtype in (torch.float32, torch.bfloat16, torch.float16),
                     lambda: f"dp_fast::add_noise: `x0` must be float32, bfloat16 or float16, got {x0.dtype}")
        torch._check(x0.dim() >= 1, lambda: "dp_fast::add_noise: `x0` must have shape (B, ...), got a 0-d tensor")
        torch._check(noise.dtype == x0.dtype and noise.shape == x0.shape,
                     lambda: f"dp_fast::add_noise: `noise` must match `x0` ({x0.dtype} {list(x0.shape)}), got "
                             f"{noise.dtype} {list(noise.shape)}")
        torch._check(timesteps.dtype == torch.int64 and timesteps.dim() == 1 and timesteps.shape[0] == x0.shape[0],
                     lambda: f"dp_fast::add_noise: `timesteps` must be int64 of shape ({x0.shape[0]},), got "
                             f"{timesteps.dtype} {list(timesteps.shape)}")
        torch._check(alphas_cumprod.dtype == torch.float32 and alphas_cumprod.dim() == 1,
                     lambda: f"dp_fast::add_noise: `alphas_cumprod` must be float32 (T,), got "
                             f"{alphas_cumprod.dtype} {list(alphas_cumprod.shape)}")
        return torch.empty_like(x0, memory_format=torch.contiguous_format)

    @torch.library.register_fake("dp_fast::random_crop")
    def _random_crop_fake(images, offsets, crop_h, crop_w, normalize):
        torch._check(images.dtype in (torch.uint8, torch.float32, torch.bfloat16, torch.float16),
                     lambda: f"dp_fast::random_crop: `images` must be uint8, float32, bfloat16 or float16, got "
                             f"{images.dtype}")
        torch._check(images.dim() == 4,
                     lambda: f"dp_fast::random_crop: `images` must have shape (N, C, H, W), got {list(images.shape)}")
        torch._check(offsets.dtype == torch.int64 and offsets.dim() == 2 and offsets.shape[0] == images.shape[0]
                     and offsets.shape[1] == 2,
                     lambda: f"dp_fast::random_crop: `offsets` must be int64 of shape ({images.shape[0]}, 2), got "
                             f"{offsets.dtype} {list(offsets.shape)}")
        torch._check(1 <= crop_h <= images.shape[2] and 1 <= crop_w <= images.shape[3],
                     lambda: f"dp_fast::random_crop: crop size ({crop_h}, {crop_w}) must be at least 1 and at most "
                             f"the image size ({images.shape[2]}, {images.shape[3]})")
        return images.new_empty((images.shape[0], images.shape[1], crop_h, crop_w), dtype=torch.float32)

    @torch.library.register_fake("dp_fast::sampler_loop")
    def _sampler_loop_fake(sample, noise, noise_index, table, weights, params, layout, terms, inpaint_data,
                           inpaint_mask, ln_eps):
        torch._check(sample.dtype == torch.float32 and sample.dim() == 3,
                     lambda: f"dp_fast::sampler_loop: `sample` must be float32 (B, T, D), got {sample.dtype} "
                             f"{list(sample.shape)}")
        return torch.empty_like(sample, memory_format=torch.contiguous_format)
