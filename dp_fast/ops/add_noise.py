"""add_noise: the DDPM forward process for a training batch with per-sample timesteps.

    out[b, ...] = sqrt(abar[t_b]) * x0[b, ...] + sqrt(1 - abar[t_b]) * noise[b, ...]
computed in float32 and returned in x0's dtype; abar = `NoiseScheduler.alphas_cumprod` (T,) float32.
The timesteps are gathered on the device (no host sync).
"""
from __future__ import annotations

from typing import Optional

import torch

from . import _triton_ops  # noqa: F401  (registers torch.ops.dp_fast.<op>_triton)
from ._common import FLOAT_DTYPES, check_contiguous, check_like, check_tensor, device_guard, resolve

OP = "add_noise"


def add_noise_ref(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                  alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0, noise: (B, ...) same dtype; timesteps: (B,) int64; alphas_cumprod: (T,) float32 -> like x0.

    For float32 inputs this is NoiseScheduler.add_noise (diffusers' formula) up to sqrt vs ** 0.5.
    """
    abar = alphas_cumprod.float().index_select(0, timesteps)  # (B,)
    bshape = (-1,) + (1,) * (x0.dim() - 1)
    out = abar.sqrt().reshape(bshape) * x0.float() + (1.0 - abar).sqrt().reshape(bshape) * noise.float()
    return out.to(x0.dtype)


def _validate(x0, noise, timesteps, alphas_cumprod) -> None:
    check_tensor(OP, "x0", x0, FLOAT_DTYPES)
    if x0.dim() < 1:
        raise ValueError(f"{OP}: `x0` must have shape (B, ...), got a 0-d tensor")
    check_like(OP, "noise", noise, x0, "x0")
    check_tensor(OP, "timesteps", timesteps, (torch.int64,), (x0.shape[0],), x0.device, "x0")
    check_tensor(OP, "alphas_cumprod", alphas_cumprod, (torch.float32,), (None,), x0.device, "x0")
    if alphas_cumprod.shape[0] < 1:
        raise ValueError(f"{OP}: `alphas_cumprod` must have shape (T,) with T >= 1, got (0,)")


def add_noise(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor,
              *, backend: Optional[str] = None) -> torch.Tensor:
    """x_t for a batch on `backend` (None: $DP_FAST_BACKEND, then "auto"). Returns a new tensor like x0.

    x0, noise: (B, ...) float32 / bfloat16 / float16, same shape and dtype; timesteps: (B,) int64;
    alphas_cumprod: (T,) float32; all on one device. A timestep outside [0, T) raises on CPU and yields
    NaN for that sample on CUDA (checking it there would sync).
    """
    _validate(x0, noise, timesteps, alphas_cumprod)
    name = resolve(OP, backend, x0.device)
    if name == "reference":
        return add_noise_ref(x0, noise, timesteps, alphas_cumprod)
    check_contiguous(OP, name, x0=x0, noise=noise, timesteps=timesteps, alphas_cumprod=alphas_cumprod)
    if name == "triton":
        with device_guard(x0.device):
            return torch.ops.dp_fast.add_noise_triton(x0, noise, timesteps, alphas_cumprod)
    return torch.ops.dp_fast.add_noise(x0, noise, timesteps, alphas_cumprod)
