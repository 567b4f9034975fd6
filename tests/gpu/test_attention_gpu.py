"""GPU checks of dp_fast.ops.attention: the compiled Triton kernel on the device against attention_ref, a
float64 oracle and torch SDPA, at the seed shapes and larger ones; CUDA-graph capture and replay.

Marked `gpu` (skipped without a CUDA device by tests/conftest.py). Not yet run on a GPU when written.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from dp_fast.models.transformer import additive_causal_mask, additive_memory_mask
from dp_fast.ops.attention import attention, attention_ref
from tests.ops._helpers import seed_of

pytestmark = pytest.mark.gpu
import dp_fast.backends as Bk
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, H, T, d): the seed (B, 4, 10, 64), odd and full tiles, many programs
SELF_SHAPES = [(1, 4, 10, 64), (8, 4, 10, 64), (7, 4, 33, 32), (3, 2, 63, 64), (64, 8, 64, 64), (1024, 4, 10, 64),
               (5, 3, 1, 48)]
# (B, H, T, S, d): the seed has S = 3 memory tokens
CROSS_SHAPES = [(1, 4, 10, 3, 64), (8, 4, 10, 3, 64), (256, 4, 16, 5, 64), (7, 12, 64, 16, 64), (3, 4, 33, 1, 32),
                (1024, 4, 10, 3, 64)]


def qkv(b, h, t, s, d, dtype, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return [(2 * torch.randn(shape, generator=g, device="cuda")).to(dtype)
            for shape in ((b, h, t, d), (b, h, s, d), (b, h, s, d))]


def naive_low_precision(q, k, v, mask=None, is_causal=False):
    """Every intermediate in q's dtype: the yardstick of low-precision error (docs/numerics.md, "Tolerances")."""
    scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]))
    if is_causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    if mask is not None:
        scores = scores + mask.to(q.dtype)
    return torch.softmax(scores, dim=-1) @ v


def sdpa(q, k, v, mask, is_causal):
    keep = None if mask is None else mask == 0          # the masks here are 0 / -inf
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=is_causal)


def check(out, q, k, v, mask, is_causal):
    assert out.dtype == q.dtype and out.shape == q.shape and out.device == q.device
    assert torch.isfinite(out).all()
    ref = attention_ref(q, k, v, mask, is_causal)
    oracle = attention_ref(q.double(), k.double(), v.double(), None if mask is None else mask.double(), is_causal)
    torch_out = sdpa(q, k, v, mask, is_causal)
    if q.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.double(), oracle, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out, torch_out, rtol=1e-5, atol=1e-5)
        return
    err = (out.double() - oracle).abs().max().item()
    low = (naive_low_precision(q, k, v, mask, is_causal).double() - oracle).abs().max().item()
    sdpa_err = (torch_out.double() - oracle).abs().max().item()
    assert err <= 2 * low, f"error {err:.3g} vs float64 exceeds twice the naive {q.dtype} error {low:.3g}"
    # no worse than torch's own fused kernel beyond one rounding of the output
    assert err <= sdpa_err + 2 * torch.finfo(q.dtype).eps * oracle.abs().max().item(), (err, sdpa_err)


def test_auto_is_triton_on_cuda():
    assert Bk.resolve_op_backend("attention", "auto", torch.device("cuda")) == "triton"


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SELF_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["is_causal", "causal_mask", "none"])
def test_self_attention(dtype, shape, mode):
    b, h, t, d = shape
    q, k, v = qkv(b, h, t, t, d, dtype, seed_of(dtype, shape, mode))
    mask = additive_causal_mask(t).cuda() if mode == "causal_mask" else None
    out = attention(q, k, v, mask, mode == "is_causal", backend="triton")
    check(out, q, k, v, mask, mode == "is_causal")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", CROSS_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["memory_mask", "none"])
def test_cross_attention(dtype, shape, mode):
    b, h, t, s, d = shape
    q, k, v = qkv(b, h, t, s, d, dtype, seed_of(dtype, shape, mode))
    mask = additive_memory_mask(t, s).cuda() if mode == "memory_mask" else None
    out = attention(q, k, v, mask, backend="triton")
    check(out, q, k, v, mask, False)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_cuda_graph_capture_and_replay(dtype):
    """Decoder-style inputs (views of one packed qkv projection; precomputed cross K/V) captured once and
    replayed on new values written into the static inputs."""
    b, t, h, d, s = 8, 10, 4, 64, 3
    e = h * d
    packed = torch.empty(b, t, 3 * e, device="cuda", dtype=dtype)
    mem_kv = torch.empty(b, h, 2, s, d, device="cuda", dtype=dtype)
    q, k, v = packed.reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    ck, cv = mem_kv[:, :, 0], mem_kv[:, :, 1]
    mem_mask = additive_memory_mask(t, s).cuda()

    def run():
        return (attention(q, k, v, is_causal=True, backend="triton"),
                attention(q, ck, cv, mem_mask, backend="triton"))

    def fill(seed):
        g = torch.Generator(device="cuda").manual_seed(seed)
        packed.copy_(2 * torch.randn(packed.shape, generator=g, device="cuda"))
        mem_kv.copy_(2 * torch.randn(mem_kv.shape, generator=g, device="cuda"))

    fill(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()                                   # compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        self_out, cross_out = run()
    for seed in (1, 2):
        fill(seed)
        graph.replay()
        torch.cuda.synchronize()
        check(self_out, q, k, v, None, True)
        check(cross_out, q, ck, cv, mem_mask, False)
        eager_self, eager_cross = run()
        assert torch.equal(self_out, eager_self) and torch.equal(cross_out, eager_cross)


def test_triton_on_cpu_tensors_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = (torch.zeros(1, 1, 4, 16) for _ in range(3))
    with pytest.raises(Bk.BackendUnavailable, match="needs the Triton interpreter"):
        attention(q, k, v, backend="triton")
