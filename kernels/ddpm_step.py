"""Triton kernel of dp_fast.ops.ddpm_step: one DDPM / DDIM step from a (K, 10) table row.

Row i = [a, b, c, d, e, f, g, sigma, lo, hi] (dp_fast.ops.ddpm_step.TABLE_COLUMNS); elementwise
    x0 = clamp(a*x + b*m, lo, hi);  eps = c*x + d*m;  out = e*x0 + f*x + g*eps + sigma*n
in float32, stored in the input dtype. The row index is loaded from device memory by every program,
so a launch never synchronises with the host and is safe to capture in a CUDA graph.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _ddpm_step_kernel(x_ptr, m_ptr, n_ptr, out_ptr, table_ptr, step_ptr, rows, numel, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    i = tl.load(step_ptr)
    valid = (i >= 0) & (i < rows)
    # A bad step cannot raise without a host sync: read row 0 and poison the output with NaN instead.
    row = table_ptr + tl.where(valid, i, 0) * 10
    a = tl.load(row + 0)
    b = tl.load(row + 1)
    c = tl.load(row + 2)
    d = tl.load(row + 3)
    e = tl.load(row + 4)
    f = tl.load(row + 5)
    g = tl.load(row + 6)
    sigma = tl.load(row + 7)
    lo = tl.load(row + 8)
    hi = tl.load(row + 9)
    x = tl.load(x_ptr + offs, mask=mask).to(tl.float32)
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    n = tl.load(n_ptr + offs, mask=mask).to(tl.float32)
    x0 = a * x + b * m
    # comparisons, not minimum/maximum, so that NaN propagates like torch.clamp
    x0 = tl.where(x0 < lo, lo, tl.where(x0 > hi, hi, x0))
    eps = c * x + d * m
    out = e * x0 + f * x + g * eps + sigma * n
    out = tl.where(valid, out, float("nan"))
    tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def ddpm_step_triton(sample: torch.Tensor, model_output: torch.Tensor, noise: torch.Tensor,
                     table: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """sample, model_output, noise: same shape/dtype, contiguous; table: (K, 10) float32; step: 0-d int64.
    Returns a new tensor like sample. Inputs are validated by dp_fast.ops.ddpm_step."""
    out = torch.empty_like(sample, memory_format=torch.contiguous_format)
    numel = sample.numel()
    if numel:
        _ddpm_step_kernel[(triton.cdiv(numel, BLOCK),)](sample, model_output, noise, out, table, step,
                                                        table.shape[0], numel, BLOCK=BLOCK)
    return out


def _spec(ty: str):
    return {
        "fn": _ddpm_step_kernel,
        "signature": {"x_ptr": f"*{ty}", "m_ptr": f"*{ty}", "n_ptr": f"*{ty}", "out_ptr": f"*{ty}",
                      "table_ptr": "*fp32", "step_ptr": "*i64", "rows": "i32", "numel": "i32"},
        "constexprs": {"BLOCK": BLOCK},
        "divisible_by_16": ["x_ptr", "m_ptr", "n_ptr", "out_ptr", "table_ptr", "numel"],  # as the JIT specialises
        "label": ty,
    }


AOT_SPECS = [_spec(ty) for ty in ("fp32", "bf16", "fp16")]
