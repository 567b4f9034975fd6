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

from typing import Optional, Union

import torch

from . import _triton_ops  # noqa: F401  (registers torch.ops.dp_fast.<op>_triton)
from ._common import FLOAT_DTYPES, check_contiguous, check_like, check_tensor, device_guard, resolve

OP = "ddpm_step"
TABLE_COLUMNS = ("a", "b", "c", "d", "e", "f", "g", "sigma", "lo", "hi")


def is_int_tensor(t) -> bool:
    return isinstance(t, torch.Tensor) and not t.dtype.is_floating_point and not t.dtype.is_complex \
        and t.dtype != torch.bool


def same_shape_as(name: str, x: torch.Tensor, sample: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of shape {tuple(sample.shape)}, got {type(x).__name__}")
    if x.shape != sample.shape:
        raise ValueError(f"{name} must have the shape of sample {tuple(sample.shape)}, got {tuple(x.shape)}")


def step_from_table(table: torch.Tensor, i: Union[int, torch.Tensor], sample: torch.Tensor,
                    model_output: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Evaluates row i of a `step_table` on sample x_t: the reference for every fused step kernel.

    table: (K, 10) float32. i: python int or 0-d / 1-element int64 tensor on the table's device (gathered on
    the device, no host sync -- CUDA-graph safe). sample, model_output, noise: same shape, computed in float32 and
    returned in sample's dtype. noise=None drops the sigma term: pass None only where sigma is 0 (see
    `NoiseScheduler.noise_plan`); this function does not check it, to stay free of host syncs.
    """
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] != len(TABLE_COLUMNS):
        raise ValueError(f"table must have shape (K, {len(TABLE_COLUMNS)}), got "
                         f"{tuple(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__}")
    if not isinstance(sample, torch.Tensor):
        raise TypeError(f"sample must be a tensor, got {type(sample).__name__}")
    same_shape_as("model_output", model_output, sample)
    if noise is not None:
        same_shape_as("noise", noise, sample)
    if isinstance(i, torch.Tensor):
        if not is_int_tensor(i) or i.numel() != 1:
            raise TypeError(f"i must be an integer tensor with one element, got dtype {i.dtype} "
                            f"shape {tuple(i.shape)}")
        row = table.index_select(0, i.reshape(1).to(table.device))[0]  # (10,), gathered on the device
    elif isinstance(i, int) and not isinstance(i, bool):
        if not 0 <= i < table.shape[0]:
            raise IndexError(f"i must be in [0, {table.shape[0] - 1}] for a table of {table.shape[0]} steps, got {i}")
        row = table[i]
    else:
        raise TypeError(f"i must be a python int or an int64 tensor, got {type(i).__name__}")
    a, b, c, d, e, f, g, sigma, lo, hi = row.to(sample.device).unbind(0)
    x, m = sample.float(), model_output.float()
    x0 = torch.clamp(a * x + b * m, lo, hi)
    eps = c * x + d * m
    prev = e * x0 + f * x + g * eps
    if noise is not None:
        prev = prev + sigma * noise.float()
    return prev.to(sample.dtype)


def ddpm_step_ref(sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor, table: torch.Tensor,
                  step: torch.Tensor) -> torch.Tensor:
    """The pure-PyTorch step: step_from_table (checked against diffusers in tests/test_schedulers.py).

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
        with device_guard(sample.device):
            return torch.ops.dp_fast.ddpm_step_triton(sample, model_output, noise, table, step)
    return torch.ops.dp_fast.ddpm_step(sample, model_output, noise, table, step)
