"""ddpm_step: one DDPM or DDIM denoising step from a precomputed coefficient table.

The table (K, 10) float32 comes from `NoiseScheduler.step_table(K)` (dp_fast/schedulers.py): row i holds
the coefficients of loop iteration i for DDPM (c = d = g = 0) or DDIM (f = 0, sigma from eta), so one op
covers both samplers. With x = sample, m = model_output, n = noise, elementwise in float32:
    x0 = clamp(a*x + b*m, lo, hi);  eps = c*x + d*m;  out = e*x0 + f*x + g*eps + sigma*n
returned in sample's dtype. `step` is a 0-d int64 tensor on the device, read only by the kernels: no host
sync, so a captured CUDA graph replays correctly after `step.fill_(i)`. Where sigma is 0 (DDPM's last
step, DDIM with eta = 0) `noise` is multiplied by 0: pass any finite tensor of the right shape.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..schedulers import TABLE_COLUMNS, step_from_table
from ._common import FLOAT_DTYPES, check_contiguous, check_like, check_tensor, device_guard, resolve

OP = "ddpm_step"


def ddpm_step_ref(sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor, table: torch.Tensor,
                  step: torch.Tensor) -> torch.Tensor:
    """The pure-PyTorch step: dp_fast.schedulers.step_from_table (itself checked against diffusers).

    sample, model_output, noise: (B, T, Da) or any shape, same dtype; table: (K, 10) float32; step: 0-d int64.
    """
    return step_from_table(table, step, sample, model_output, noise)


def _validate(sample, model_output, noise, table, step) -> None:
    check_tensor(OP, "sample", sample, FLOAT_DTYPES)
    check_like(OP, "model_output", model_output, sample, "sample")
    check_like(OP, "noise", noise, sample, "sample")
    check_tensor(OP, "table", table, (torch.float32,), (None, len(TABLE_COLUMNS)), sample.device, "sample")
    if table.shape[0] < 1:
        raise ValueError(f"{OP}: `table` must have at least one row, got shape {tuple(table.shape)}")
    check_tensor(OP, "step", step, (torch.int64,), (), sample.device, "sample")


def ddpm_step(sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor, table: torch.Tensor,
              step: torch.Tensor, *, backend: Optional[str] = None) -> torch.Tensor:
    """One step x_t -> x_{t-1} on `backend` (None: $DP_FAST_BACKEND, then "auto"). Returns a new tensor.

    sample, model_output, noise: same shape, float32 / bfloat16 / float16, on one device;
    table: (K, 10) float32 on that device; step: 0-d int64 tensor on that device (the table row).
    A step outside [0, K) raises on CPU and yields NaN on CUDA (checking it there would sync).
    """
    _validate(sample, model_output, noise, table, step)
    name = resolve(OP, backend, sample.device)
    if name == "reference":
        return ddpm_step_ref(sample, model_output, noise, table, step)
    check_contiguous(OP, name, sample=sample, model_output=model_output, noise=noise, table=table)
    if name == "triton":
        from . import _triton_ops  # noqa: F401  (registers torch.ops.dp_fast.ddpm_step_triton)
        with device_guard(sample.device):
            return torch.ops.dp_fast.ddpm_step_triton(sample, model_output, noise, table, step)
    return torch.ops.dp_fast.ddpm_step(sample, model_output, noise, table, step)
