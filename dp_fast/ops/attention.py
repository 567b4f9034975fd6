"""attention: scaled dot-product attention at the decoder's shapes (few tokens, one tile per head).

    out = softmax(q k^T / sqrt(d) + mask) v        q: (B, H, T, d), k, v: (B, H, S, d) -> (B, H, T, d)

Two uses in TransformerForDiffusion's decoder (dp_fast/models/transformer.py):
  * causal self-attention over the T <= 64 action tokens: k, v from the same tokens, is_causal=True
    (or mask = additive_causal_mask(T));
  * cross-attention of the T action tokens over S condition tokens (memory = [time, obs_0 ..]) with the
    memory mask additive_memory_mask(T, S)[:T] (action token i sees memory token s iff i >= s - 1),
    k, v (B, H, S, d) precomputed once per call.
Limits (the op's contract, checked for every backend): 1 <= T, S <= 64, 1 <= d <= 64, float32 / bfloat16
/ float16. Scores, softmax and both products are computed in float32 by every backend; the output has
q's dtype.

Backends (dp_fast.backends.resolve_op_backend): "reference" (attention_ref, pure PyTorch), "triton"
(kernels/attention.py; on CPU tensors only in the interpreter, TRITON_INTERPRET=1), "auto" (triton on
CUDA tensors when Triton imports, reference otherwise). There is no C++ attention: "cpu" and "cuda" raise
BackendUnavailable. The dispatcher reads
only tensor metadata, so it never synchronises with the device and can be captured in a CUDA graph.
Not yet on the sampling path: dp_fast/sampling uses torch SDPA until a GPU benchmark
(benchmarks/bench_attention.py) shows the kernel beating it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ._common import FLOAT_DTYPES, check_tensor, device_guard, resolve
from ._triton_ops import kernels

OP = "attention"
MAX_TOKENS = 64     # T and S: one (T_PAD, S_PAD) score tile per program in the kernel
MAX_HEAD_DIM = 64      # the decoder's d is 32..64 (n_emb / n_head)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  is_causal: bool = False) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v in float32 (float64 for float64 inputs), returned in q's dtype.

    q: (B, H, T, d); k, v: (B, H, S, d); mask: None, bool (True = attend, as torch SDPA) or additive float,
    broadcastable to (B, H, T, S); is_causal: key j is seen by query i iff j <= i (SDPA's top-left causal
    mask; not combined with `mask`). A query row that sees no key gives NaN. No shape limits here: this is
    the plain definition, also used as the float64 oracle in the tests.
    """
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = q.to(ct), k.to(ct), v.to(ct)
    scores = qf @ kf.transpose(-1, -2) / math.sqrt(q.shape[-1])                 # (B, H, T, S)
    if is_causal:
        t, s = scores.shape[-2:]
        keep = torch.ones(t, s, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if mask is not None:
        scores = scores + _additive(mask).to(ct)
    return (torch.softmax(scores, dim=-1) @ vf).to(q.dtype)


def _additive(mask: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, float("-inf"))
    return mask


def _validate(q, k, v, mask, is_causal) -> None:
    check_tensor(OP, "q", q, FLOAT_DTYPES)
    if q.dim() != 4:
        raise ValueError(f"{OP}: `q` must have shape (B, H, T, d), got {tuple(q.shape)}")
    bsz, heads, t, d = q.shape
    check_tensor(OP, "k", k, (q.dtype,), (bsz, heads, None, d), q.device, "q")
    s = k.shape[2]
    check_tensor(OP, "v", v, (q.dtype,), (bsz, heads, s, d), q.device, "q")
    if not 1 <= t <= MAX_TOKENS:
        raise ValueError(f"{OP}: `q` must have 1 <= T <= {MAX_TOKENS} query tokens (dim 2 of (B, H, T, d)), "
                         f"got T = {t} in shape {tuple(q.shape)}")
    if not 1 <= s <= MAX_TOKENS:
        raise ValueError(f"{OP}: `k` must have 1 <= S <= {MAX_TOKENS} key tokens (dim 2 of (B, H, S, d)), "
                         f"got S = {s} in shape {tuple(k.shape)}")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"{OP}: head dim d (last dim of `q`) must be in [1, {MAX_HEAD_DIM}], got {d}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"{OP}: `is_causal` must be a bool, got {type(is_causal).__name__}")
    if mask is None:
        return
    if is_causal:
        raise ValueError(f"{OP}: pass either `mask` or is_causal=True, not both (fold the causal part into the mask)")
    check_tensor(OP, "mask", mask, FLOAT_DTYPES + (torch.bool,), None, q.device, "q")
    full = (bsz, heads, t, s)
    if mask.dim() > 4 or any(m not in (1, f) for m, f in zip(mask.shape[::-1], full[::-1])):
        raise ValueError(f"{OP}: `mask` must be broadcastable to (B, H, T, S) = {full}, e.g. (T, S) = {(t, s)}, "
                         f"got shape {tuple(mask.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
              is_causal: bool = False, *, backend: Optional[str] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v on `backend` (None: $DP_FAST_BACKEND, then "auto"). New tensor.

    q: (B, H, T, d), k, v: (B, H, S, d): one float dtype (float32 / bfloat16 / float16), one device,
    1 <= T, S <= 64, 1 <= d <= 64. mask: None, or bool (True = attend) / additive float, broadcastable to
    (B, H, T, S) on q's device; is_causal: key j <= query i (not together with mask). Returns (B, H, T, d)
    in q's dtype, contiguous on the triton backend. The triton backend needs the last dim of q, k, v
    contiguous (stride 1; other strides are free, so q/k/v may be views of a packed qkv projection) and
    reads float32 masks without a copy (other mask dtypes are converted per call).
    """
    _validate(q, k, v, mask, is_causal)
    name = resolve(OP, backend, q.device)
    if name == "reference":
        return attention_ref(q, k, v, mask, is_causal)
    for arg, t in (("q", q), ("k", k), ("v", v)):
        if t.stride(-1) != 1 and t.shape[-1] > 1:
            raise ValueError(f"{OP}: backend 'triton' needs the last dim of `{arg}` contiguous (stride 1), got "
                             f"strides {t.stride()} for shape {tuple(t.shape)}; pass `{arg}.contiguous()` or use "
                             f"backend='reference'")
    m4 = None
    if mask is not None:
        m4 = _additive(mask).to(torch.float32)
        m4 = m4.reshape((1,) * (4 - m4.dim()) + tuple(m4.shape)).expand(q.shape[0], q.shape[1], q.shape[2],
                                                                        k.shape[2])
    with device_guard(q.device):
        return kernels("attention").attention_triton(q, k, v, m4, is_causal)


__all__ = ["attention", "attention_ref"]
