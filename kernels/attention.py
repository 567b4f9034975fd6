"""Triton kernel of dp_fast.ops.attention: softmax(q k^T / sqrt(d) + mask) v for the decoder's small shapes.

One program per (batch, head) holds the whole problem in registers: q (T_PAD, D_PAD), k and v
(S_PAD, D_PAD), the score tile (T_PAD, S_PAD). T and S are at most 64 (action tokens; memory tokens of
the cross-attention are a handful), so there is no online softmax and no loop over key blocks.
T_PAD / S_PAD / D_PAD are powers of two >= 16 (tl.dot's minimum). Scores, softmax and both products
are fp32-accurate and the output is stored in the input dtype. Inputs are upcast to fp32 on load. q k^T of
16-bit inputs is one TF32 tensor-core dot (16-bit values are exact in TF32, products exact, fp32
accumulation; a native bf16 tl.dot would do the same, but Triton 3.6's interpreter computes bf16 dots
wrongly, so the CPU tests could not check it). fp32 q k^T and p v (p in fp32) are FP32_DOT dots:
"ieee" (FMA units, exact fp32) for tiles up to T_PAD * S_PAD * D_PAD = 32 * 32 * 64, "tf32x3" (three TF32
tensor-core products, near-fp32 accuracy; 16-bit values are exact in TF32) above, where "ieee" spills
heavily (T = S = 64, d = 64: 6.7 KB of stack per thread on sm_90, against none with tf32x3).

Masking, all applied to the fp32 scores: key columns >= S are -inf; IS_CAUSAL keeps key j <= query i
(torch SDPA's is_causal, top-left aligned); HAS_MASK adds an fp32 additive mask read through strides,
so a (T, S) mask broadcast over batch and heads costs no copy. A row whose keys are all -inf gives NaN,
as in the reference.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

NUM_WARPS = 4
IEEE_MAX_TILE = 32 * 32 * 64   # T_PAD * S_PAD * D_PAD; see the module docstring
_LOG2E = 1.4426950408889634


@triton.jit
def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, m_ptr, T, S, H, qk_scale,
                      sqb, sqh, sqt, skb, skh, sks, svb, svh, svs, sob, soh, sot, smb, smh, smt, sms,
                      D: tl.constexpr, T_PAD: tl.constexpr, S_PAD: tl.constexpr, D_PAD: tl.constexpr,
                      IS_CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, FP32_DOT: tl.constexpr):
    pid = tl.program_id(0)
    b = (pid // H).to(tl.int64)
    h = (pid % H).to(tl.int64)
    ti = tl.arange(0, T_PAD)
    sj = tl.arange(0, S_PAD)
    dk = tl.arange(0, D_PAD)
    t_ok = ti < T
    s_ok = sj < S
    d_ok = dk < D

    q = tl.load(q_ptr + b * sqb + h * sqh + ti[:, None] * sqt + dk[None, :],
                mask=t_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)     # (T_PAD, D_PAD)
    k = tl.load(k_ptr + b * skb + h * skh + sj[:, None] * sks + dk[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)     # (S_PAD, D_PAD)
    v = tl.load(v_ptr + b * svb + h * svh + sj[:, None] * svs + dk[None, :],
                mask=s_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)     # (S_PAD, D_PAD)

    # base-2 logits: qk_scale = log2(e) / sqrt(d), the mask is scaled by log2(e) too
    if q_ptr.dtype.element_ty == tl.float32:
        s = tl.dot(q, tl.trans(k), input_precision=FP32_DOT)                      # (T_PAD, S_PAD)
    else:
        s = tl.dot(q, tl.trans(k), input_precision="tf32")   # 16-bit values are exact in TF32
    s = s * qk_scale
    if HAS_MASK:
        m = tl.load(m_ptr + b * smb + h * smh + ti[:, None] * smt + sj[None, :] * sms,
                    mask=t_ok[:, None] & s_ok[None, :], other=0.0).to(tl.float32)
        s = s + m * 1.4426950408889634                                           # log2(e)
    # padded query rows (q = 0, mask 0) keep finite scores: no NaN is computed even where it is not stored
    if IS_CAUSAL:
        s = tl.where(s_ok[None, :] & (sj[None, :] <= ti[:, None]), s, float("-inf"))
    else:
        s = tl.where(s_ok[None, :], s, float("-inf"))
    row_max = tl.max(s, axis=1)                                                   # (T_PAD,)
    p = tl.exp2(s - row_max[:, None])
    denom = tl.sum(p, axis=1)
    o = tl.dot(p, v, input_precision=FP32_DOT) / denom[:, None]                    # (T_PAD, D_PAD)
    tl.store(o_ptr + b * sob + h * soh + ti[:, None] * sot + dk[None, :], o.to(o_ptr.dtype.element_ty),
             mask=t_ok[:, None] & d_ok[None, :])


def block_sizes(t: int, s: int, d: int):
    """(T_PAD, S_PAD, D_PAD): powers of two >= 16 covering T, S and the head dim."""
    return tuple(max(16, triton.next_power_of_2(n)) for n in (t, s, d))


def fp32_dot(t_pad: int, s_pad: int, d_pad: int) -> str:
    """input_precision of the fp32 dots: exact FMA dots while they fit in registers, tf32x3 above."""
    return "ieee" if t_pad * s_pad * d_pad <= IEEE_MAX_TILE else "tf32x3"


def attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
                     is_causal: bool = False) -> torch.Tensor:
    """q: (B, H, T, d); k, v: (B, H, S, d); one dtype, one device, last dim contiguous (stride 1).
    mask: None or float32 (B, H, T, S) additive (expanded views with zero strides are fine).
    Returns a new contiguous (B, H, T, d) tensor in q's dtype. Inputs are validated by dp_fast.ops.attention."""
    bsz, heads, t, d = q.shape
    s = k.shape[2]
    out = torch.empty((bsz, heads, t, d), dtype=q.dtype, device=q.device)
    if bsz * heads == 0:
        return out
    t_pad, s_pad, d_pad = block_sizes(t, s, d)
    has_mask = mask is not None
    m = mask if has_mask else q            # never read when HAS_MASK is False
    m_strides = mask.stride() if has_mask else (0, 0, 0, 0)
    _attention_kernel[(bsz * heads,)](
        q, k, v, out, m, t, s, heads, _LOG2E / d ** 0.5,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *out.stride()[:3], *m_strides,
        D=d, T_PAD=t_pad, S_PAD=s_pad, D_PAD=d_pad, IS_CAUSAL=bool(is_causal), HAS_MASK=has_mask,
        FP32_DOT=fp32_dot(t_pad, s_pad, d_pad), num_warps=NUM_WARPS)
    return out


_STRIDES = ("sqb", "sqh", "sqt", "skb", "skh", "sks", "svb", "svh", "svs", "sob", "soh", "sot",
            "smb", "smh", "smt", "sms")


def _spec(ty: str, t: int, s: int, d: int, causal: bool, has_mask: bool, label: str):
    t_pad, s_pad, d_pad = block_sizes(t, s, d)
    # without a mask the launcher passes q as the (unread) mask pointer
    sig = {"q_ptr": f"*{ty}", "k_ptr": f"*{ty}", "v_ptr": f"*{ty}", "o_ptr": f"*{ty}",
           "m_ptr": "*fp32" if has_mask else f"*{ty}",
           "T": "i32", "S": "i32", "H": "i32", "qk_scale": "fp32"}
    sig.update({name: "i32" for name in _STRIDES})
    return {
        "fn": _attention_kernel,
        "signature": sig,
        "constexprs": {"D": d, "T_PAD": t_pad, "S_PAD": s_pad, "D_PAD": d_pad, "IS_CAUSAL": causal,
                       "HAS_MASK": has_mask, "FP32_DOT": fp32_dot(t_pad, s_pad, d_pad)},
        "divisible_by_16": ["q_ptr", "k_ptr", "v_ptr", "o_ptr", "m_ptr"],
        "options": {"num_warps": NUM_WARPS},
        "label": f"{ty} {label} T_PAD={t_pad} S_PAD={s_pad} D={d} {fp32_dot(t_pad, s_pad, d_pad)}",
    }


# The seed decoder (n_emb 256, 4 heads: d = 64, horizon T = 10, memory S = 1 + n_obs_steps = 3) in every
# dtype: causal self-attention, cross-attention with the memory mask; plus the largest tile (T = S = 64)
# and the smallest head dim of the range (32) with an explicit mask.
AOT_SPECS = [
    spec for ty in ("fp32", "bf16", "fp16") for spec in (
        _spec(ty, 10, 10, 64, True, False, "self causal"),
        _spec(ty, 10, 3, 64, False, True, "cross memory-mask"),
        _spec(ty, 64, 64, 64, True, False, "self causal"),
        _spec(ty, 64, 16, 32, False, True, "cross mask"),
        _spec(ty, 10, 10, 64, False, False, "no mask"),
    )
]
