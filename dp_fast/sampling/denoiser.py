"""The precomputing denoiser: work that does not change across the K denoising steps is done once.

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
The CUDA-graph loop (graph.py) runs it step by step; the C++ CPU loop (cpu.py) takes its per-call terms.
The result equals the reference up to float reassociation (~1e-6 in fp32); tests/test_sampling.py checks it
(docs/architecture.md, "Sampling").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..models.transformer import LayerStack, TransformerForDiffusion


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
            if self.memory_mask is not None:  # (T, S) additive, broadcast over (B, T, H, S)
                scores = scores + self.memory_mask[:t, :s].reshape(1, t, 1, s).to(scores.dtype)
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
