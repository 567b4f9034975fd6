"""The K-step denoising loops behind DiffusionPolicy.predict_action, one constructor for all of them.

`make_sampler(kind, model, precision, step_backend)` builds the loop that dp_fast.backends.resolve chose
(its `sampler` field, a key of dp_fast.backends.SAMPLERS):
  * "reference"   ReferenceSampler (reference.py): the model's forward per step, plain PyTorch;
  * "cpu"         CpuSampler (cpu.py): the whole loop in one C++ op, weights packed once;
  * "cuda_graph"  GraphSampler (graph.py): the precomputing denoiser (denoiser.py) + the ddpm_step op,
                  captured in a CUDA graph once per (batch, K) and replayed;
  * "eager"       the same GraphSampler loop without capture (the triton backend on a CPU policy).
Every sampler has `sample(sched, k, shape, cond, noise=None, generator=None, inpaint=None)` and reads
its noise through the scheduler's noise plan (noise.py). docs/architecture.md ("Sampling") walks through it.
"""
from __future__ import annotations

import torch

from ..models.transformer import TransformerForDiffusion
from .cpu import CpuSampler
from .graph import GraphSampler
from .noise import draw_noise
from .reference import ReferenceSampler

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision) -> str:
    """"fp32" / "bf16" / "fp16" (torch dtypes accepted) -> the name; anything else raises ValueError."""
    if isinstance(precision, torch.dtype):
        names = {v: k for k, v in PRECISIONS.items()}
        if precision in names:
            return names[precision]
    elif precision in PRECISIONS:
        return precision
    raise ValueError(f"precision must be one of {list(PRECISIONS)} (or the torch dtypes), got {precision!r}")


def make_sampler(kind: str, model: TransformerForDiffusion, precision: str = "fp32", step_backend: str = "reference"):
    """The sampler of `kind` for `model` (rebuild it after the weights change: fast samplers pack them).

    precision: "fp32", or "bf16" / "fp16" for the fast samplers (cpu: 16-bit weights, and for bf16 the
    CPU's fastest bf16 arithmetic, AMX tiles or vdpbf16ps with fp32 accumulation, else fp32 arithmetic;
    GPU: the denoiser in that dtype). step_backend: the ddpm_step op's backend for the graph loop.
    """
    dtype = PRECISIONS[check_precision(precision)]
    if kind == "reference":
        if dtype != torch.float32:
            raise ValueError(f"the reference sampler is the fp32 ground truth, got precision={precision!r}")
        return ReferenceSampler(model)
    if kind == "cpu":
        return CpuSampler(model, dtype)
    if kind in ("cuda_graph", "eager"):
        return GraphSampler(model, dtype, capture=kind == "cuda_graph", step_backend=step_backend)
    raise ValueError(f"no sampler of kind {kind!r} (kinds: reference, cpu, cuda_graph, eager)")


__all__ = ["CpuSampler", "GraphSampler", "ReferenceSampler", "PRECISIONS", "check_precision", "draw_noise",
           "make_sampler"]
