"""TransformerForDiffusion in plain PyTorch, parameter names as the original's state dict.

Decoder mode (time_as_cond=True): condition tokens [time, obs_0 .. obs_{To-1}] -> memory by an MLP
(n_cond_layers = 0) or a TransformerEncoder; action tokens go through n_layer pre-norm decoder
layers (self-attention with the causal mask, cross-attention to memory with the memory mask).
Encoder-only mode (time_as_cond=False): [time, x_0 .. x_{T-1}] through n_layer encoder layers.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """t: (B,) -> (B, dim) = [sin(t f), cos(t f)], f_k = exp(-k ln(10000) / (dim/2 - 1))."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, device=t.device) * -scale)
    arg = t[:, None] * freqs[None, :]
    return torch.cat((arg.sin(), arg.cos()), dim=-1)


def additive_causal_mask(n: int) -> torch.Tensor:
    """(n, n) with 0 where key j <= query i, -inf above the diagonal."""
    keep = torch.ones(n, n).tril().bool()
    return torch.zeros(n, n).masked_fill(~keep, float("-inf"))


def additive_memory_mask(t: int, s: int) -> torch.Tensor:
    """(T, S): action token i sees condition token s iff i >= s - 1 (token 0 = time)."""
    ti, si = torch.meshgrid(torch.arange(t), torch.arange(s), indexing="ij")
    return torch.zeros(t, s).masked_fill(~(ti >= si - 1), float("-inf"))


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (packed in_proj, out_proj) with a functional forward."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.n_head = n_head
        self.dropout = dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q_in: torch.Tensor, kv_in: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """q_in: (B, L, E), kv_in: (B, S, E), mask: (L, S) additive or None -> (B, L, E)."""
        e = q_in.shape[-1]
        w, b = self.in_proj_weight, self.in_proj_bias
        if q_in is kv_in:
            q, k, v = F.linear(q_in, w, b).chunk(3, dim=-1)
        else:
            q = F.linear(q_in, w[:e], b[:e])
            k, v = F.linear(kv_in, w[e:], b[e:]).chunk(2, dim=-1)
        out = attention_heads(q, k, v, self.n_head, mask, self.dropout if self.training else 0.0)
        return self.out_proj(out)


def attention_heads(q, k, v, n_head: int, mask: Optional[torch.Tensor], dropout_p: float = 0.0):
    """Scaled dot-product attention over heads. q: (B, L, E), k/v: (B, S, E) -> (B, L, E)."""
    bsz, lq, e = q.shape
    s = k.shape[1]
    hd = e // n_head
    q = q.reshape(bsz, lq, n_head, hd).transpose(1, 2)
    k = k.reshape(bsz, s, n_head, hd).transpose(1, 2)
    v = v.reshape(bsz, s, n_head, hd).transpose(1, 2)
    if mask is not None:
        mask = mask.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(bsz, lq, e)


class EncoderLayer(nn.Module):
    """nn.TransformerEncoderLayer(norm_first=True, activation=gelu) semantics."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, n_head, dropout)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.p = dropout

    def _drop(self, x):
        return F.dropout(x, self.p, self.training)

    def forward(self, x, mask=None):
        h = self.norm1(x)
        x = x + self._drop(self.self_attn(h, h, mask))
        return x + self._drop(self.linear2(self._drop(F.gelu(self.linear1(self.norm2(x))))))


class DecoderLayer(nn.Module):
    """nn.TransformerDecoderLayer(norm_first=True, activation=gelu) semantics."""

    def __init__(self, dim: int, n_head: int, dropout: float):
        super().__init__()
        self.self_attn = MultiheadAttention(dim, n_head, dropout)
        self.multihead_attn = MultiheadAttention(dim, n_head, dropout)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.p = dropout

    def _drop(self, x):
        return F.dropout(x, self.p, self.training)

    def forward(self, x, memory, mask=None, memory_mask=None):
        h = self.norm1(x)
        x = x + self._drop(self.self_attn(h, h, mask))
        x = x + self._drop(self.multihead_attn(self.norm2(x), memory, memory_mask))
        return x + self._drop(self.linear2(self._drop(F.gelu(self.linear1(self.norm3(x))))))


class LayerStack(nn.Module):
    """Holds `layers` so parameter names read `encoder.layers.i.*` / `decoder.layers.i.*`."""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class TransformerForDiffusion(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, horizon: int, n_obs_steps: Optional[int] = None,
                 cond_dim: int = 0, n_layer: int = 12, n_head: int = 12, n_emb: int = 768,
                 p_drop_emb: float = 0.1, p_drop_attn: float = 0.1, causal_attn: bool = False,
                 time_as_cond: bool = True, n_cond_layers: int = 0):
        super().__init__()
        if n_obs_steps is None:
            n_obs_steps = horizon
        t_tok, t_cond = horizon, 1
        if not time_as_cond:
            t_tok, t_cond = t_tok + 1, 0
        self.obs_as_cond = cond_dim > 0
        if self.obs_as_cond:
            if not time_as_cond:
                raise ValueError("obs_as_cond requires time_as_cond")
            t_cond += n_obs_steps
        self.n_emb = n_emb
        self.horizon = horizon
        self.T, self.T_cond = t_tok, t_cond
        self.encoder_only = t_cond == 0
        self.p_drop_emb = p_drop_emb

        self.input_emb = nn.Linear(input_dim, n_emb)
        self.pos_emb = nn.Parameter(torch.zeros(1, t_tok, n_emb))
        self.cond_obs_emb = nn.Linear(cond_dim, n_emb) if self.obs_as_cond else None
        self.cond_pos_emb = None
        self.decoder = None
        if not self.encoder_only:
            self.cond_pos_emb = nn.Parameter(torch.zeros(1, t_cond, n_emb))
            if n_cond_layers > 0:
                self.encoder = LayerStack([EncoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_cond_layers)])
            else:
                self.encoder = nn.Sequential(nn.Linear(n_emb, 4 * n_emb), nn.Mish(), nn.Linear(4 * n_emb, n_emb))
            self.decoder = LayerStack([DecoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_layer)])
        else:
            self.encoder = LayerStack([EncoderLayer(n_emb, n_head, p_drop_attn) for _ in range(n_layer)])

        self.register_buffer("mask", None)
        self.register_buffer("memory_mask", None)
        if causal_attn:
            self.register_buffer("mask", additive_causal_mask(t_tok))
            if time_as_cond and self.obs_as_cond:
                self.register_buffer("memory_mask", additive_memory_mask(t_tok, t_cond))
        self.ln_f = nn.LayerNorm(n_emb)
        self.head = nn.Linear(n_emb, output_dim)
        self.reset_parameters()

    def reset_parameters(self):
        """The original's init: N(0, 0.02) Linear/attention weights and position embeddings, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, MultiheadAttention):
                nn.init.normal_(m.in_proj_weight, 0.0, 0.02)
                nn.init.zeros_(m.in_proj_bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_emb, 0.0, 0.02)
        if self.cond_obs_emb is not None:
            nn.init.normal_(self.cond_pos_emb, 0.0, 0.02)

    # pieces ------------------------------------------------------------------------------
    def timesteps_for(self, timestep: Union[torch.Tensor, int], batch: int, device) -> torch.Tensor:
        if not torch.is_tensor(timestep):
            timestep = torch.tensor([timestep], dtype=torch.long, device=device)
        elif timestep.ndim == 0:
            timestep = timestep[None].to(device)
        return timestep.expand(batch)

    def time_token(self, t: torch.Tensor) -> torch.Tensor:
        """t: (B,) -> (B, 1, E)."""
        return sinusoidal_embedding(t, self.n_emb).unsqueeze(1)

    def encode_condition(self, time_tok: torch.Tensor, cond_tok: Optional[torch.Tensor]) -> torch.Tensor:
        """time_tok: (B, 1, E); cond_tok: (B, To, E) = cond_obs_emb(cond) or None -> memory (B, Tc, E)."""
        x = time_tok if cond_tok is None else torch.cat([time_tok, cond_tok], dim=1)
        x = F.dropout(x + self.cond_pos_emb[:, :x.shape[1]], self.p_drop_emb, self.training)
        if isinstance(self.encoder, LayerStack):
            for layer in self.encoder.layers:
                x = layer(x)
            return x
        return self.encoder(x)

    def decode(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x: (B, T, Din) -> (B, T, Dout) given memory (B, Tc, E)."""
        t = x.shape[1]
        h = F.dropout(self.input_emb(x) + self.pos_emb[:, :t], self.p_drop_emb, self.training)
        mask = None if self.mask is None else self.mask[:t, :t]
        mem_mask = None if self.memory_mask is None else self.memory_mask[:t]
        for layer in self.decoder.layers:
            h = layer(h, memory, mask, mem_mask)
        return self.head(self.ln_f(h))

    def forward(self, sample: torch.Tensor, timestep, cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        """sample: (B, T, Din); timestep: int, 0-d or (B,) int64; cond: (B, To, cond_dim) -> (B, T, Dout)."""
        bsz = sample.shape[0]
        time_tok = self.time_token(self.timesteps_for(timestep, bsz, sample.device)).to(sample.dtype)
        if self.encoder_only:
            h = torch.cat([time_tok, self.input_emb(sample)], dim=1)
            n = h.shape[1]
            h = F.dropout(h + self.pos_emb[:, :n], self.p_drop_emb, self.training)
            mask = None if self.mask is None else self.mask[:n, :n]
            for layer in self.encoder.layers:
                h = layer(h, mask)
            return self.head(self.ln_f(h[:, 1:]))
        cond_tok = self.cond_obs_emb(cond) if self.obs_as_cond else None
        return self.decode(sample, self.encode_condition(time_tok, cond_tok))
