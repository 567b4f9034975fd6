"""Shared by tests/ops: which backends can run here, tolerances, seeds."""
from __future__ import annotations

import zlib

import pytest
import torch

import dp_fast.backends as B

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# docs/numerics.md ("Tolerances"): fp32 elementwise 1e-5; bf16 / fp16 1e-2 relative.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-5),
       torch.float16: dict(rtol=1e-2, atol=1e-5)}


def fast_backends():
    """pytest params for the non-reference backends that run on CPU tensors, skipped when unavailable."""
    out = []
    for name in ("cpu", "triton"):
        try:
            B.resolve_op_backend("ddpm_step", name, "cpu")
            marks = ()
        except B.BackendUnavailable as e:
            marks = (pytest.mark.skip(reason=str(e)),)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def all_backends():
    return [pytest.param("reference", id="reference")] + fast_backends()


def seed_of(*key) -> int:
    """A per-test seed that does not depend on PYTHONHASHSEED."""
    return zlib.crc32(repr(key).encode())


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.device == ref.device
    torch.testing.assert_close(out.float(), ref.float(), **TOL[ref.dtype])
