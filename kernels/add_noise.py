"""Triton kernel of dp_fast.ops.add_noise: the DDPM forward process with per-sample timesteps.

    out[b, ...] = sqrt(abar[t[b]]) * x0[b, ...] + sqrt(1 - abar[t[b]]) * noise[b, ...]
in float32, stored in x0's dtype. Timesteps are read on the device (no host sync); a timestep outside
[0, T) gives NaN for that sample, since raising would need a sync.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _add_noise_kernel(x_ptr, n_ptr, t_ptr, abar_ptr, out_ptr, numel, inner, num_t, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    b = offs // inner
    t = tl.load(t_ptr + b, mask=mask, other=0)
    valid = (t >= 0) & (t < num_t)
    abar = tl.load(abar_ptr + tl.where(valid, t, 0), mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    n = tl.load(n_ptr + offs, mask=mask).to(tl.float32)
    # sqrt_rn: IEEE-rounded like torch.sqrt (tl.sqrt may lower to an approximation)
    out = tl.sqrt_rn(abar) * x + tl.sqrt_rn(1.0 - abar) * n
    out = tl.where(valid, out, float("nan"))
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def add_noise_triton(x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """x0, noise: (B, ...) same dtype, contiguous; timesteps: (B,) int64; alphas_cumprod: (T,) float32.
    Returns a new tensor like x0. Inputs are validated by dp_fast.ops.add_noise."""
    out = torch.empty_like(x0, memory_format=torch.contiguous_format)
    numel = x0.numel()
    if numel:
        inner = numel // x0.shape[0]
        _add_noise_kernel[(triton.cdiv(numel, BLOCK),)](x0, noise, timesteps, alphas_cumprod, out, numel, inner,
                                                        alphas_cumprod.shape[0], BLOCK=BLOCK)
    return out


def _spec(ty: str):
    return {
        "fn": _add_noise_kernel,
        "signature": {"x_ptr": f"*{ty}", "n_ptr": f"*{ty}", "t_ptr": "*i64", "abar_ptr": "*fp32",
                      "out_ptr": f"*{ty}", "numel": "i32", "inner": "i32", "num_t": "i32"},
        "constexprs": {"BLOCK": BLOCK},
        "divisible_by_16": ["x_ptr", "n_ptr", "out_ptr", "numel", "inner"],  # as the JIT specialises
        "label": ty,
    }


AOT_SPECS = [_spec(ty) for ty in ("fp32", "bf16", "fp16")]
