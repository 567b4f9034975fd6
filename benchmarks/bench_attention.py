"""dp_fast.ops.attention at the seed decoder's shapes: reference vs torch SDPA vs the Triton kernel.

Rule (issue 4, item 2): keep the Triton attention kernel -- and wire it into the sampler -- only where this
benchmark shows it beating torch's own SDPA at these shapes. It has not been measured yet: run it on the next
GPU session (`pytest benchmarks/bench_attention.py --benchmark-only` on a CUDA machine) and record the
numbers in benchmarks/RESULTS.md with the decision. The number to compare is extra_info["graph_us"]: device
time per call inside a CUDA graph, which is how the sampler runs (dp_fast/sampling/graph.py); the
pytest-benchmark wall times and extra_info["do_bench_us"] (triton.testing.do_bench, eager launches)
include Python and launch overhead, which at these sizes is most of it.

Groups, one per (kind, batch, dtype, device); the seed decoder has n_emb 256 over 4 heads (d = 64), horizon
T = 10 and S = 1 + n_obs_steps = 3 memory tokens:
  self_B{1,8}_H4_T10_d64_causal     causal self-attention over the action tokens (is_causal=True)
  cross_B{1,8}_H4_T10_S3_d64_mem    cross-attention over the memory with the memory mask (T, S) broadcast
Rows: reference (attention_ref), sdpa (torch.nn.functional.scaled_dot_product_attention, as the decoder
calls it: additive mask in q's dtype), triton (dp_fast.ops.attention(backend="triton"); CUDA only -- on a CPU
Triton is the interpreter, a correctness tool, so the row is skipped there). Every row is checked against
the reference once before it is timed. DP_FAST_BENCH_GPU_ONLY=1 leaves out the CPU groups; on CUDA the
rounds are capped by --benchmark-max-time (benchmarks/_common.py).
"""
from __future__ import annotations

from typing import Callable, Dict

import pytest
import torch
import torch.nn.functional as F

from dp_fast.models.transformer import additive_memory_mask
from dp_fast.ops.attention import attention, attention_ref

from benchmarks._common import devices, pedantic

# name: (kind, B, H, T, S, d)
SHAPES = {
    "self_B1_H4_T10_d64_causal": ("self", 1, 4, 10, 10, 64),
    "self_B8_H4_T10_d64_causal": ("self", 8, 4, 10, 10, 64),
    "cross_B1_H4_T10_S3_d64_mem": ("cross", 1, 4, 10, 3, 64),
    "cross_B8_H4_T10_S3_d64_mem": ("cross", 8, 4, 10, 3, 64),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEVICES = devices()
# fp32 rows must match the reference; 16-bit rows only within a bound that catches a broken kernel
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
GRAPH_CALLS = 20


def _inputs(shape: str, dtype: torch.dtype, device: str):
    kind, b, h, t, s, d = SHAPES[shape]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, generator=g).to(device, dtype) for n in ((b, h, t, d), (b, h, s, d), (b, h, s, d)))
    mask = additive_memory_mask(t, s).to(device) if kind == "cross" else None   # float32 (T, S)
    return q, k, v, mask, kind == "self"


def _reference(q, k, v, mask, causal):
    return lambda: attention_ref(q, k, v, mask, causal)


def _sdpa(q, k, v, mask, causal):
    m = None if mask is None else mask.to(q.dtype)   # as dp_fast.models.transformer.attention_heads
    return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=m, is_causal=causal)


def _triton(q, k, v, mask, causal):
    if q.device.type != "cuda":
        pytest.skip("triton rows run on CUDA only: on a CPU Triton is the interpreter (TRITON_INTERPRET=1), "
                    "a correctness tool, not a timing row")
    return lambda: attention(q, k, v, mask, causal, backend="triton")


ROWS: Dict[str, Callable] = {"reference": _reference, "sdpa": _sdpa, "triton": _triton}


def _device_times(fn) -> Dict[str, float]:
    """Microseconds per call: eager (triton.testing.do_bench) and replayed from a CUDA graph of GRAPH_CALLS calls."""
    import triton.testing

    out = {"do_bench_us": round(1e3 * triton.testing.do_bench(fn, warmup=25, rep=200), 2)}
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):      # warm-up outside the capture (Triton compiles on the first call)
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(GRAPH_CALLS):
            fn()
    out["graph_us"] = round(1e3 * triton.testing.do_bench(graph.replay, warmup=10, rep=200) / GRAPH_CALLS, 3)
    return out


@pytest.mark.parametrize("row", list(ROWS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("device", DEVICES)
def test_attention(benchmark, device, shape, dtype, row):
    q, k, v, mask, causal = _inputs(shape, DTYPES[dtype], device)
    fn = ROWS[row](q, k, v, mask, causal)
    with torch.no_grad():
        out = fn()
        ref = attention_ref(q, k, v, mask, causal)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[q.dtype], msg=lambda m: f"{row} != reference: {m}")

    cuda = device == "cuda"
    kind, b, h, t, s, d = SHAPES[shape]
    benchmark.group = f"attention_{shape}_{dtype}_{device}"
    benchmark.extra_info.update(kind=kind, B=b, H=h, T=t, S=s, d=d, dtype=dtype, device=device,
                                max_abs_err_vs_reference=(out.float() - ref.float()).abs().max().item())
    if cuda:
        with torch.no_grad():
            benchmark.extra_info.update(_device_times(fn))

    def call():
        with torch.no_grad():
            r = fn()
        if cuda:
            torch.cuda.synchronize()
        return r

    pedantic(benchmark, call, rounds=200 if cuda else 50, iterations=10, warmup_rounds=2, cuda=cuda)
