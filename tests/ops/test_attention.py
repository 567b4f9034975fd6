"""dp_fast.ops.attention: the reference against the transformer's attention and torch SDPA; the Triton kernel
(interpreter on CPU) against the reference; input validation and backend resolution.

Tolerances (docs/numerics.md, "Tolerances"): float32 within 1e-5 of attention_ref; bfloat16 / float16: the error against a
float64 oracle is at most twice that of the same attention computed naively in the low precision.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from dp_fast.models.transformer import additive_causal_mask, additive_memory_mask, attention_heads
from dp_fast.ops.attention import attention, attention_ref
from tests.ops._helpers import FLOAT_DTYPES, seed_of

import dp_fast.backends as Bk


def _triton_param():
    try:
        Bk.resolve_op_backend("attention", "triton", torch.device("cpu"))
        marks = ()
    except Bk.BackendUnavailable as e:
        marks = (pytest.mark.skip(reason=str(e)),)
    return pytest.param("triton", marks=marks, id="triton")


BACKENDS = [pytest.param("reference", id="reference"), _triton_param()]
TRITON = [_triton_param()]

# (B, H, T, d) self-attention; the seed decoder is (B, 4, 10, 64)
SELF_SHAPES = [(1, 4, 10, 64), (3, 4, 10, 64), (1, 1, 1, 32), (3, 1, 16, 16), (1, 4, 33, 32), (3, 1, 64, 64)]
# (B, H, T, S, d) cross-attention over S memory tokens; the seed decoder has S = 1 + n_obs_steps = 3
CROSS_SHAPES = [(1, 4, 10, 3, 64), (3, 4, 10, 5, 64), (3, 1, 1, 1, 16), (1, 4, 16, 3, 32), (3, 1, 33, 5, 64),
                (1, 4, 10, 16, 32)]


def qkv(b, h, t, s, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    # 2x spread so that softmax rows are not near-uniform
    return [(2 * torch.randn(shape, generator=g)).to(dtype) for shape in ((b, h, t, d), (b, h, s, d), (b, h, s, d))]


def naive_low_precision(q, k, v, mask=None, is_causal=False):
    """The same attention with every intermediate in q's dtype: the yardstick of low-precision error."""
    scores = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]))
    if is_causal:
        t, s = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores + mask.to(q.dtype)
    return torch.softmax(scores, dim=-1) @ v


def check_against_reference(out, q, k, v, mask=None, is_causal=False):
    assert out.dtype == q.dtype and out.shape == q.shape[:3] + (v.shape[-1],)
    ref = attention_ref(q, k, v, mask, is_causal)
    oracle = attention_ref(q.double(), k.double(), v.double(), None if mask is None else mask.double(), is_causal)
    assert torch.isfinite(out).all()
    if q.dtype == torch.float32:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.double(), oracle, rtol=1e-5, atol=1e-5)
        return
    err = (out.double() - oracle).abs().max().item()
    low = (naive_low_precision(q, k, v, mask, is_causal).double() - oracle).abs().max().item()
    assert err <= 2 * low, f"{q.dtype}: error {err:.3g} vs float64 > twice the naive low-precision error {low:.3g}"


# ------------------------------------------------------------------------------ the reference itself
@pytest.mark.parametrize("mode", ["causal", "none"])
def test_reference_is_the_transformer_self_attention(mode):
    """attention_ref with heads split = dp_fast.models.transformer.attention_heads (what the decoder runs)."""
    b, t, h, d = 3, 10, 4, 64
    g = torch.Generator().manual_seed(seed_of("self", mode))
    q, k, v = (torch.randn(b, t, h * d, generator=g) for _ in range(3))
    mask = additive_causal_mask(t) if mode == "causal" else None
    want = attention_heads(q, k, v, h, mask)                                      # (B, T, E)

    def heads(x):
        return x.reshape(b, -1, h, d).transpose(1, 2)

    got = attention_ref(heads(q), heads(k), heads(v), mask).transpose(1, 2).reshape(b, t, h * d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if mode == "causal":
        got_flag = attention_ref(heads(q), heads(k), heads(v), is_causal=True).transpose(1, 2).reshape(b, t, h * d)
        torch.testing.assert_close(got_flag, want, rtol=1e-5, atol=1e-5)


def test_reference_is_the_transformer_cross_attention():
    b, t, s, h, d = 3, 10, 3, 4, 64
    g = torch.Generator().manual_seed(seed_of("cross"))
    q = torch.randn(b, t, h * d, generator=g)
    k, v = (torch.randn(b, s, h * d, generator=g) for _ in range(2))
    mask = additive_memory_mask(t, s)
    want = attention_heads(q, k, v, h, mask)
    got = attention_ref(q.reshape(b, t, h, d).transpose(1, 2), k.reshape(b, s, h, d).transpose(1, 2),
                        v.reshape(b, s, h, d).transpose(1, 2), mask).transpose(1, 2).reshape(b, t, h * d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t,s", [(10, 10), (10, 3), (3, 10)])
def test_reference_is_causal_like_sdpa(t, s):
    """is_causal is torch SDPA's (top-left aligned) also when T != S."""
    q, k, v = qkv(2, 3, t, s, 16, torch.float64, seed_of("causal", t, s))
    torch.testing.assert_close(attention_ref(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True))


def test_reference_bool_mask_is_sdpa_bool_mask():
    q, k, v = qkv(2, 3, 10, 5, 16, torch.float64, seed_of("bool"))
    keep = additive_memory_mask(10, 5) == 0
    torch.testing.assert_close(attention_ref(q, k, v, keep), F.scaled_dot_product_attention(q, k, v, attn_mask=keep))


# ------------------------------------------------------------------------------ fast vs reference
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SELF_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["is_causal", "causal_mask", "none"])
def test_self_attention(backend, dtype, shape, mode):
    b, h, t, d = shape
    q, k, v = qkv(b, h, t, t, d, dtype, seed_of("self", backend, dtype, shape, mode))
    mask = additive_causal_mask(t) if mode == "causal_mask" else None
    out = attention(q, k, v, mask, mode == "is_causal", backend=backend)
    check_against_reference(out, q, k, v, mask, mode == "is_causal")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", CROSS_SHAPES, ids=str)
@pytest.mark.parametrize("mode", ["memory_mask", "none"])
def test_cross_attention(backend, dtype, shape, mode):
    b, h, t, s, d = shape
    q, k, v = qkv(b, h, t, s, d, dtype, seed_of("cross", backend, dtype, shape, mode))
    mask = additive_memory_mask(t, s) if mode == "memory_mask" else None
    out = attention(q, k, v, mask, backend=backend)
    check_against_reference(out, q, k, v, mask)


@pytest.mark.parametrize("backend", TRITON)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_views_of_packed_projections(backend, dtype):
    """q, k, v as the decoder makes them: strided views of one (B, T, 3, H, d) projection, no copies."""
    b, t, h, d = 3, 10, 4, 32
    g = torch.Generator().manual_seed(seed_of("packed", dtype))
    qkv_packed = (2 * torch.randn(b, t, 3 * h * d, generator=g)).to(dtype)
    q, k, v = qkv_packed.reshape(b, t, 3, h, d).permute(2, 0, 3, 1, 4)
    assert not q.is_contiguous()
    out = attention(q, k, v, is_causal=True, backend=backend)
    assert out.is_contiguous()
    check_against_reference(out, q, k, v, is_causal=True)


@pytest.mark.parametrize("backend", TRITON)
def test_masks_broadcast_bool_and_16_bit(backend):
    """Per-batch / per-head masks (B, 1, T, S) / (H, T, S) read through strides; bool and bf16 masks."""
    b, h, t, s, d = 3, 4, 10, 5, 32
    q, k, v = qkv(b, h, t, s, d, torch.float32, seed_of("bcast"))
    g = torch.Generator().manual_seed(1)
    keep = torch.rand(b, 1, t, s, generator=g) > 0.4
    keep[..., 0] = True                                                        # every query sees a key
    per_batch = torch.zeros(b, 1, t, s).masked_fill(~keep, float("-inf"))
    per_head = torch.randn(h, t, s, generator=g)
    for mask in (per_batch, per_head, keep, additive_memory_mask(t, s).to(torch.bfloat16)):
        out = attention(q, k, v, mask, backend=backend)
        torch.testing.assert_close(out, attention_ref(q, k, v, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy
@pytest.mark.parametrize("backend", BACKENDS)
def test_fully_masked_row_is_nan_like_the_reference(backend):
    q, k, v = qkv(1, 2, 4, 3, 16, torch.float32, seed_of("nan"))
    mask = torch.zeros(4, 3)
    mask[2] = float("-inf")
    out = attention(q, k, v, mask, backend=backend)
    assert torch.isnan(out[:, :, 2]).all() and torch.isfinite(out[:, :, [0, 1, 3]]).all()
    torch.testing.assert_close(out[:, :, [0, 1, 3]], attention_ref(q, k, v, mask)[:, :, [0, 1, 3]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    q, k, v = qkv(0, 4, 10, 10, 64, torch.float32, 0)
    assert attention(q, k, v, is_causal=True, backend=backend).shape == (0, 4, 10, 64)


# ------------------------------------------------------------------------------ validation, backends
def _good():
    return qkv(2, 4, 10, 3, 32, torch.float32, 0)


@pytest.mark.parametrize("case,exc,match", [
    ("q 3-d", ValueError, r"`q` must have shape \(B, H, T, d\), got \(4, 10, 32\)"),
    ("q float64", TypeError, "`q` must be float32, bfloat16 or float16, got float64"),
    ("q int", TypeError, "`q` must be float32, bfloat16 or float16, got int64"),
    ("k other dtype", TypeError, "`k` must be float32, got bfloat16"),
    ("k other batch", ValueError, r"`k` must have shape \(2, 4, \*, 32\), got \(1, 4, 3, 32\)"),
    ("k other head dim", ValueError, r"`k` must have shape \(2, 4, \*, 32\), got \(2, 4, 3, 16\)"),
    ("v other S", ValueError, r"`v` must have shape \(2, 4, 3, 32\), got \(2, 4, 5, 32\)"),
    ("k other device", ValueError, "`k` must be on the device of `q`"),
    ("k not a tensor", TypeError, "`k` must be a tensor, got list"),
    ("T > 64", ValueError, "1 <= T <= 64 query tokens .* got T = 65"),
    ("S > 64", ValueError, "1 <= S <= 64 key tokens .* got S = 65"),
    ("S = 0", ValueError, "got S = 0"),
    ("d > 64", ValueError, r"head dim d .* \[1, 64\], got 65"),
    ("mask shape", ValueError,
     r"`mask` must be broadcastable to \(B, H, T, S\) = \(2, 4, 10, 3\).* got shape \(10, 4\)"),
    ("mask 5-d", ValueError, "`mask` must be broadcastable"),
    ("mask int", TypeError, "`mask` must be float32, bfloat16, float16 or bool, got int64"),
    ("mask and is_causal", ValueError, "either `mask` or is_causal=True, not both"),
    ("is_causal not bool", TypeError, "`is_causal` must be a bool, got int"),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input(backend, case, exc, match):
    q, k, v = _good()
    mask, causal = None, False
    if case == "q 3-d":
        q = q[0]
    elif case == "q float64":
        q = q.double()
    elif case == "q int":
        q = q.long()
    elif case == "k other dtype":
        k = k.bfloat16()
    elif case == "k other batch":
        k = k[:1]
    elif case == "k other head dim":
        k = k[..., :16]
    elif case == "v other S":
        v = torch.zeros(2, 4, 5, 32)
    elif case == "k other device":
        k = k.to("meta")
    elif case == "k not a tensor":
        k = k.tolist()
    elif case == "T > 64":
        q = torch.zeros(2, 4, 65, 32)
    elif case == "S > 64":
        k = v = torch.zeros(2, 4, 65, 32)
    elif case == "S = 0":
        k = v = torch.zeros(2, 4, 0, 32)
    elif case == "d > 64":
        q, k, v = (torch.zeros(2, 4, n, 65) for n in (10, 3, 3))
    elif case == "mask shape":
        mask = torch.zeros(10, 4)
    elif case == "mask 5-d":
        mask = torch.zeros(1, 2, 4, 10, 3)
    elif case == "mask int":
        mask = torch.zeros(10, 3, dtype=torch.long)
    elif case == "mask and is_causal":
        mask, causal = torch.zeros(10, 3), True
    elif case == "is_causal not bool":
        causal = 1
    with pytest.raises(exc, match=match):
        attention(q, k, v, mask, causal, backend=backend)


@pytest.mark.parametrize("backend", TRITON)
def test_triton_needs_unit_last_stride(backend):
    q, k, v = _good()
    q_t = q.transpose(-1, -2).contiguous().transpose(-1, -2)                  # same values, last stride 10
    with pytest.raises(ValueError, match=r"last dim of `q` contiguous \(stride 1\)"):
        attention(q_t, k, v, backend=backend)
    assert attention(q_t, k, v, backend="reference").shape == q.shape


def test_backend_resolution(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("DP_FAST_BACKEND", raising=False)
    assert Bk.resolve_op_backend("attention", None, cpu) == "reference"          # auto never picks the interpreter
    assert Bk.resolve_op_backend("attention", "auto", cpu) == "reference"
    monkeypatch.setenv("DP_FAST_BACKEND", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert Bk.resolve_op_backend("attention", None, cpu) == "triton"
    assert Bk.resolve_op_backend("attention", "reference", cpu) == "reference"   # the call's keyword wins over the env var
    for name in ("cpu", "cuda"):
        with pytest.raises(Bk.BackendUnavailable, match=f"attention: there is no '{name}' implementation"):
            Bk.resolve_op_backend("attention", name, cpu)
    with pytest.raises(ValueError, match="backend must be one of"):
        Bk.resolve_op_backend("attention", "cudnn", cpu)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(Bk.BackendUnavailable, match="needs the Triton interpreter"):
        Bk.resolve_op_backend("attention", "triton", cpu)
    q, k, v = _good()
    with pytest.raises(Bk.BackendUnavailable, match="needs the Triton interpreter"):
        attention(q, k, v, backend="triton")
