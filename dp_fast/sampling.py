"""Fast sampling: work that does not change across the K denoising steps is done once.

`FastDenoiser` rewrites the transformer's per-step computation without changing its math:
  * time tokens: the condition token of timestep t depends only on t. With the MLP condition encoder
    (n_cond_layers = 0, token-wise) its memory row, and so its cross-attention keys/values, are cached
    per model for all K timesteps. Observation memory rows and their keys/values are computed once per
    call. (With a TransformerEncoder condition encoder the tokens interact: the memory of all K steps is
    computed once per call in one batched pass.)
  * cross-attention algebra: with keys K_s and values V_s fixed for the whole loop, the query and output
    projections fold into them: score_{i,h,s} = LN2(h_i) . A_{h,s} + c_{h,s} with A_{h,s} = Wq_h^T K_{h,s} / sqrt(d),
    c_{h,s} = bq_h . K_{h,s} / sqrt(d), and out_i = sum_{h,s} p_{i,h,s} U_{h,s} + bo with U_{h,s} = Wo_h V_{h,s}.
    Per step the cross-attention costs two (T x E) @ (E x H*S) products instead of two E x E projections.
  * the scheduler step is one table-driven elementwise op (dp_fast.ops.ddpm_step).
The result equals the reference up to float reassociation (~1e-6 in fp32); tests/test_sampling.py checks it.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from .models.transformer import LayerStack, TransformerForDiffusion
from .schedulers import step_from_table

# ------------------------------------------------------------------------------------- precision
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


# ------------------------------------------------------------------------------------- backends
# Sampler implementations, by what predict_action runs for a policy backend on a device.
SAMPLERS = {
    "reference": "DiffusionPolicy.sample: the plain-PyTorch K-step loop (ground truth)",
    "cpu": "dp_fast::sampler_loop: the whole loop in one C++ op (dp_fast/sampling_cpu.py)",
    "cuda_graph": "FastDenoiser loop captured once per (batch, K) in a CUDA graph and replayed (dp_fast/sampling_cuda.py)",
    "eager": "FastDenoiser loop in eager PyTorch (the CUDA-graph sampler's body, run without capture)",
}


def resolve_backend(name: Optional[str], device="cpu") -> str:
    """The policy's backend name for `device`: dp_fast.backends.resolve_policy_backend, plus the sampler
    backends this module provides ("cpu", "cuda", "triton") where dp_fast.backends does not list them yet.
    An explicitly named backend that cannot run raises BackendUnavailable saying why."""
    _b = _backends_module()
    requested = name or os.environ.get("DP_FAST_BACKEND") or "auto"
    if requested in ("cpu", "cuda", "triton") and requested not in _b.backends():
        ok, why = sampler_backend_available(requested, device)
        if not ok:
            raise _b.BackendUnavailable(f"backend {requested!r} is not available: {why}")
        return requested
    if "device" in inspect.signature(_b.resolve_policy_backend).parameters:
        return _b.resolve_policy_backend(name, device=torch.device(device).type)
    return _b.resolve_policy_backend(name)


def _backends_module():
    """dp_fast.backends the module (the package re-exports a function of the same name over it)."""
    import importlib
    return importlib.import_module(__package__ + ".backends")


def sampler_backend_available(backend: str, device="cpu"):
    """(ok, reason) for running `backend`'s sampler on `device`."""
    dev = torch.device(device).type
    if backend == "cpu":
        from . import sampling_cpu
        return sampling_cpu.available()
    if backend == "cuda" and dev != "cuda":
        return False, "backend 'cuda' runs the CUDA-graph sampler and needs a CUDA device"
    if backend in ("cuda", "triton") and dev == "cuda" and not torch.cuda.is_available():
        return False, "torch.cuda.is_available() is False"
    if backend == "triton":
        import importlib.util
        if importlib.util.find_spec("triton") is None:
            return False, "triton is not installed (pip install triton)"
    return True, ""


def sampler_kind(backend: str, device) -> str:
    """Which SAMPLERS entry predict_action uses for a resolved policy backend on `device`."""
    dev = torch.device(device).type
    if backend == "reference":
        return "reference"
    if backend == "cpu":
        if dev != "cpu":
            raise _backends_module().BackendUnavailable(f"backend 'cpu' runs the C++ CPU loop, but the policy is on {device}; "
                                     f"use backend='cuda' (or 'auto') there")
        return "cpu"
    if backend in ("cuda", "triton"):
        if dev == "cuda":
            return "cuda_graph"
        if backend == "cuda":
            raise _backends_module().BackendUnavailable(f"backend 'cuda' needs the policy on a CUDA device, it is on {device}")
        return "eager"  # triton on CPU (TRITON_INTERPRET=1): the graph sampler's body, uncaptured
    raise ValueError(f"no sampler for backend {backend!r}")


# ------------------------------------------------------------------------------------- profiling ranges
_NULL = contextlib.nullcontext()
_nvtx_enabled: Optional[bool] = None


def set_nvtx(enabled: Optional[bool]) -> None:
    """Force nvtx ranges on / off; None = decide from the environment (the default)."""
    global _nvtx_enabled
    _nvtx_enabled = enabled


def nvtx_range(name: str):
    """An nvtx range named `name` while profiling, else a shared no-op context (no per-call cost beyond
    one check). Profiling = DP_FAST_NVTX=1, or running under Nsight Systems."""
    global _nvtx_enabled
    if _nvtx_enabled is None:
        want = os.environ.get("DP_FAST_NVTX", "").lower() in ("1", "true", "on") or \
            "NSYS_PROFILING_SESSION_ID" in os.environ
        try:
            import nvtx  # noqa: F401
        except ImportError:
            want = False
        _nvtx_enabled = want
    if not _nvtx_enabled:
        return _NULL
    import nvtx
    return nvtx.annotate(f"dp_fast/{name}", domain="dp_fast")


@dataclass
class LayerWeights:
    ln1: tuple
    w_qkv: torch.Tensor   # (3E, E)
    b_qkv: torch.Tensor
    w_o: torch.Tensor     # (E, E)
    b_o: torch.Tensor
    ln2: tuple
    ca_wq: torch.Tensor   # (E, E)
    ca_bq: torch.Tensor
    ca_wkv: torch.Tensor  # (2E, E)
    ca_bkv: torch.Tensor
    ca_wo: torch.Tensor
    ca_bo: torch.Tensor
    ln3: tuple
    w1: torch.Tensor
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor


def _ln(m, dtype):
    return (m.weight.detach().to(dtype), m.bias.detach().to(dtype), m.eps)


class FastDenoiser:
    """Per-model cache of packed weights and time-token cross-attention terms.

    Built from a TransformerForDiffusion in decoder mode (time_as_cond=True). Rebuild (or call
    `refresh`) after the weights change; `DiffusionPolicy` does this by comparing parameter versions.
    """

    def __init__(self, model: TransformerForDiffusion, dtype: Optional[torch.dtype] = None):
        if model.encoder_only:
            raise ValueError("FastDenoiser needs the decoder transformer (time_as_cond=True)")
        self.model = model
        self.dtype = dtype or model.head.weight.dtype
        self.n_head = model.decoder.layers[0].self_attn.n_head
        self.E = model.n_emb
        self.mlp_cond = not isinstance(model.encoder, LayerStack)
        self.refresh()

    def refresh(self):
        m, dt = self.model, self.dtype

        def c(t):
            return t.detach().to(dt)

        self.layers: List[LayerWeights] = []
        for layer in m.decoder.layers:
            sa, ca = layer.self_attn, layer.multihead_attn
            e = self.E
            self.layers.append(LayerWeights(
                ln1=_ln(layer.norm1, dt), w_qkv=c(sa.in_proj_weight), b_qkv=c(sa.in_proj_bias),
                w_o=c(sa.out_proj.weight), b_o=c(sa.out_proj.bias), ln2=_ln(layer.norm2, dt),
                ca_wq=ca.in_proj_weight[:e].detach(), ca_bq=ca.in_proj_bias[:e].detach(),
                ca_wkv=ca.in_proj_weight[e:].detach(), ca_bkv=ca.in_proj_bias[e:].detach(),
                ca_wo=ca.out_proj.weight.detach(), ca_bo=c(ca.out_proj.bias), ln3=_ln(layer.norm3, dt),
                w1=c(layer.linear1.weight), b1=c(layer.linear1.bias), w2=c(layer.linear2.weight),
                b2=c(layer.linear2.bias)))
        self.ln_f = _ln(m.ln_f, dt)
        self.w_in, self.b_in = c(m.input_emb.weight), c(m.input_emb.bias)
        self.pos_emb = c(m.pos_emb[0])
        self.w_head, self.b_head = c(m.head.weight), c(m.head.bias)
        self.mask = None if m.mask is None else m.mask.to(dt)
        self.memory_mask = None if m.memory_mask is None else m.memory_mask
        self._time_cache = {}

    # ----------------------------------------------------------------- condition precompute
    def _fold(self, memory: torch.Tensor):
        """memory: (N, S, E) fp32 -> per layer (A (N, H*S, E), c (N, H*S), U (N, H*S, E)), head-major."""
        n, s, e = memory.shape
        h = self.n_head
        d = e // h
        out = []
        for lw in self.layers:
            kv = F.linear(memory, lw.ca_wkv, lw.ca_bkv)           # (N, S, 2E)
            k, v = kv[..., :e].reshape(n, s, h, d), kv[..., e:].reshape(n, s, h, d)
            wq = lw.ca_wq.reshape(h, d, e)                         # rows of head h
            a = torch.einsum("nshd,hde->nhse", k, wq) / math.sqrt(d)
            cc = torch.einsum("nshd,hd->nhs", k, lw.ca_bq.reshape(h, d)) / math.sqrt(d)
            wo = lw.ca_wo.reshape(e, h, d)                         # columns of head h
            u = torch.einsum("nshd,ehd->nhse", v, wo)
            out.append((a.reshape(n, h * s, e).to(self.dtype), cc.reshape(n, h * s).to(self.dtype),
                        u.reshape(n, h * s, e).to(self.dtype)))
        return out

    def time_terms(self, timesteps: torch.Tensor, key: Optional[tuple] = None):
        """Cross-attention terms of the time token for each timestep (MLP condition encoder only),
        cached per model: per layer (A (K, H, E), c (K, H), U (K, H, E)).

        key: the timesteps as a tuple of ints, when the caller has them on the host (reading them from a
        CUDA tensor would synchronise, which CUDA-graph capture forbids)."""
        key = (tuple(timesteps.tolist()) if key is None else tuple(key), timesteps.device)
        if key not in self._time_cache:
            m = self.model
            with torch.no_grad():
                tok = m.time_token(timesteps.to(m.pos_emb.device)) + m.cond_pos_emb[:, :1]  # (K, 1, E)
                mem = m.encoder(tok)                                                       # (K, 1, E)
                self._time_cache = {key: self._fold(mem)}
        return self._time_cache[key]

    def prepare(self, cond: Optional[torch.Tensor], timesteps: torch.Tensor, key: Optional[tuple] = None):
        """Per-call condition terms. cond: (B, To, Do) or None; key as in time_terms. Returns a `Prepared`."""
        m = self.model
        k = timesteps.shape[0]
        with torch.no_grad():
            if self.mlp_cond:
                time = self.time_terms(timesteps, key)
                obs = None
                if cond is not None:
                    tok = m.cond_obs_emb(cond) + m.cond_pos_emb[:, 1:1 + cond.shape[1]]
                    obs = self._fold(m.encoder(tok))
                return Prepared(time=time, obs=obs, k=k, batch=None if cond is None else cond.shape[0])
            b = cond.shape[0] if cond is not None else 1
            t_tok = m.time_token(timesteps.repeat_interleave(b))                          # (K*B, 1, E)
            c_tok = None if cond is None else m.cond_obs_emb(cond).repeat(k, 1, 1)        # (K*B, To, E)
            mem = m.encode_condition(t_tok, c_tok)                                         # (K*B, S, E)
            return Prepared(time=self._fold(mem), obs=None, k=k, batch=b)

    # ----------------------------------------------------------------- one model evaluation
    def eps(self, x: torch.Tensor, i, prep: "Prepared") -> torch.Tensor:
        """Model output for loop iteration i (python int or 0-d device tensor). x: (B, T, D)."""
        b, t, _ = x.shape
        h_n = self.n_head
        e = self.E
        d = e // h_n
        dt = self.dtype
        h = F.linear(x.to(dt), self.w_in, self.b_in) + self.pos_emb[:t]
        mask = None if self.mask is None else self.mask[:t, :t]
        idx = i if torch.is_tensor(i) else torch.tensor(i, device=x.device)
        for li, lw in enumerate(self.layers):
            y = F.layer_norm(h, (e,), *lw.ln1[:2], lw.ln1[2])
            q, k, v = F.linear(y, lw.w_qkv, lw.b_qkv).reshape(b, t, 3, h_n, d).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h = h + F.linear(att.transpose(1, 2).reshape(b, t, e), lw.w_o, lw.b_o)
            y = F.layer_norm(h, (e,), *lw.ln2[:2], lw.ln2[2])
            a, c, u = prep.terms(li, idx, b)                      # (B, H*S, E), (B, H*S), (B, H*S, E)
            s = a.shape[1] // h_n
            scores = (torch.bmm(y, a.transpose(1, 2)) + c[:, None]).reshape(b, t, h_n, s)
            if self.memory_mask is not None:
                scores = scores + prep.order_mask(self.memory_mask, t, s, h_n, self.mlp_cond).to(scores.dtype)
            p = torch.softmax(scores, dim=-1).reshape(b, t, h_n * s)
            h = h + torch.bmm(p, u) + lw.ca_bo
            y = F.layer_norm(h, (e,), *lw.ln3[:2], lw.ln3[2])
            h = h + F.linear(F.gelu(F.linear(y, lw.w1, lw.b1)), lw.w2, lw.b2)
        y = F.layer_norm(h, (e,), *self.ln_f[:2], self.ln_f[2])
        return F.linear(y, self.w_head, self.b_head)


class Prepared:
    """Per-call cross-attention terms, split into time-dependent and static (observation) parts.

    Memory token order inside each head block is the reference's: [time, obs_0, ..., obs_{To-1}]; with
    the MLP encoder the time part is concatenated before the observation part per head.
    """

    def __init__(self, time, obs, k: int, batch: Optional[int]):
        self.time, self.obs, self.k, self.batch = time, obs, k, batch

    def terms(self, layer: int, idx: torch.Tensor, b: int):
        ta, tc, tu = self.time[layer]
        if self.obs is None:
            if ta.shape[0] == self.k * b:  # encoder-cond: rows ordered (step, batch)
                sl = idx * b + torch.arange(b, device=ta.device)
                return ta.index_select(0, sl), tc.index_select(0, sl), tu.index_select(0, sl)
            one = idx.reshape(1)
            return (ta.index_select(0, one).expand(b, -1, -1), tc.index_select(0, one).expand(b, -1),
                    tu.index_select(0, one).expand(b, -1, -1))
        oa, oc, ou = self.obs[layer]
        one = idx.reshape(1)
        h = ta.shape[1]
        e = ta.shape[2]
        so = oa.shape[1] // h
        # interleave per head: [time_h, obs_h0 .. obs_h{To-1}] for h = 0..H-1
        a = torch.cat([ta.index_select(0, one).expand(b, -1, -1).reshape(b, h, 1, e), oa.reshape(b, h, so, e)], 2)
        c = torch.cat([tc.index_select(0, one).expand(b, -1).reshape(b, h, 1), oc.reshape(b, h, so)], 2)
        u = torch.cat([tu.index_select(0, one).expand(b, -1, -1).reshape(b, h, 1, e), ou.reshape(b, h, so, e)], 2)
        return a.reshape(b, h * (so + 1), e), c.reshape(b, h * (so + 1)), u.reshape(b, h * (so + 1), e)

    @staticmethod
    def order_mask(memory_mask: torch.Tensor, t: int, s: int, h: int, mlp_cond: bool):
        """(T, S) additive mask broadcast over (B, T, H, S)."""
        return memory_mask[:t, :s].reshape(1, t, 1, s)


def fast_sample(den: FastDenoiser, sched, k: int, shape, cond: Optional[torch.Tensor], noise_fn,
                step_fn=step_from_table) -> torch.Tensor:
    """The K-step loop on the fast path. noise_fn(j) returns the j-th noise draw (B, T, D)."""
    timesteps = sched.timesteps(k)
    table = sched.step_table(k)
    draws = sched.noise_draws(k)
    prep = den.prepare(cond, timesteps)
    x = noise_fn(0)
    used = 1
    zeros = None
    for i in range(k):
        eps = den.eps(x, i, prep)
        if draws[i]:
            n = noise_fn(used)
            used += 1
        else:
            zeros = torch.zeros_like(x) if zeros is None else zeros
            n = zeros
        x = step_fn(table, i, x, eps.to(x.dtype), n)
    return x
