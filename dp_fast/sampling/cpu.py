"""CPU fast path: the whole K-step denoising loop in one C++ op, `torch.ops.dp_fast.sampler_loop`.

csrc/sampler_cpu.h documents the op; docs/architecture.md ("Sampling") says where it sits. This module packs a TransformerForDiffusion for it once (every
matmul weight as 32-column panels in one blob, in the order the loop reads them; biases, LayerNorm
weights and position embeddings in a second fp32 blob), builds the per-call condition terms with
`FastDenoiser` (cross-attention with Wq folded into the keys and Wo into the values; the time-token
terms are cached per model for all K timesteps) and calls the op.

Precision: `weight_dtype` bf16 / fp16 stores the matmul weights in 16 bits (half the bytes streamed per
step). bf16 runs in one of three arithmetics (`bf16_mode()` says the fastest this CPU has):
  "amx"    (AMX-BF16): each matmul's input rows rounded to bf16, 16 x 32 tiles multiplied with tdpbf16ps,
           fp32 accumulation;
  "dot"    (AVX512_BF16): the same rounding, vdpbf16ps (two bf16 products per fp32 lane), fp32 accumulation;
  "widen"  bf16 weights widened to fp32 as they are read, fp32 arithmetic (fp16 always runs so).
LayerNorm, softmax, the cross-attention with the condition, the residual stream and the scheduler step stay
fp32 in every mode.

Every mode of the reference runs here: decoder with MLP or TransformerEncoder condition encoder,
with or without observation tokens / causal masks, encoder-only (time_as_cond=False), inpainting
(obs_as_cond=False), pred_action_steps_only, DDPM / DDIM, epsilon / sample prediction.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import torch

from .. import _ext
from ..models.transformer import TransformerForDiffusion, additive_causal_mask, additive_memory_mask
from ..schedulers import NoiseScheduler
from .denoiser import FastDenoiser
from .noise import draw_noise

WEIGHT_DTYPES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# bf16 arithmetic, fastest first -> layout wdtype (csrc/sampler_cpu.h): tiles, K-pairs, plain bf16
BF16_MODES = {"amx": 4, "dot": 3, "widen": 1}


def isa() -> str:
    """Which compiled copy of the loop runs: "avx512", "avx2" (AVX2 + FMA) or "generic", the widest the CPU
    has (DP_FAST_SAMPLER_ISA forces one)."""
    return torch.ops.dp_fast.sampler_isa()


def bf16_mode() -> str:
    """The fastest bf16 arithmetic of the loop here: "amx" (AMX-BF16), "dot" (AVX512_BF16) or "widen"."""
    _ext.require()
    return str(torch.ops.dp_fast.sampler_bf16_mode())


def _bf16_mode_from_env() -> Optional[str]:
    mode = os.environ.get("DP_FAST_SAMPLER_BF16", "")
    if mode not in ("", "auto", *BF16_MODES):
        raise ValueError(f"DP_FAST_SAMPLER_BF16 must be unset, 'auto', 'amx', 'dot' or 'widen', got {mode!r}")
    return mode if mode in BF16_MODES else None


def _layout_fields() -> Tuple[List[str], List[str], int, int]:
    """(global fields, per-layer fields, version, panel width) as the compiled op defines them."""
    info = dict(item.split("=", 1) for item in torch.ops.dp_fast.sampler_layout().split(";"))
    return info["fields"].split(","), info["layer_fields"].split(","), int(info["version"]), int(info["panel"])


class _Blob:
    """1-d tensor assembled from parts, each starting at a 64-byte boundary."""

    def __init__(self, dtype: torch.dtype):
        self.dtype, self.parts, self.size = dtype, [], 0
        self.align = 64 // torch.empty(0, dtype=dtype).element_size()

    def add(self, t: torch.Tensor) -> int:
        t = t.detach().reshape(-1).to(self.dtype)
        off = self.size
        pad = (-t.numel()) % self.align
        self.parts += [t, t.new_zeros(pad)] if pad else [t]
        self.size += t.numel() + pad
        return off

    def tensor(self) -> torch.Tensor:
        return torch.cat(self.parts) if self.parts else torch.zeros(0, dtype=self.dtype)


def _panels(w: torch.Tensor, panel: int) -> torch.Tensor:
    """Linear weight (N, K) -> ceil(N / panel) panels of (K, panel), zero padded, flattened."""
    n, k = w.shape
    np_ = -(-n // panel)
    padded = w.new_zeros(np_ * panel, k)
    padded[:n] = w
    return padded.reshape(np_, panel, k).transpose(1, 2).contiguous().reshape(-1)


def _pair_panels(w: torch.Tensor, panel: int, k_align: int = 2) -> torch.Tensor:
    """Linear weight (N, K) -> ceil(N / panel) panels of K-pairs: panel row kk holds W[j, 2kk], W[j, 2kk + 1]
    for its columns j (N zero padded, K zero padded to a multiple of k_align), flattened."""
    n, k = w.shape
    np_, k2 = -(-n // panel), -(-k // k_align) * k_align // 2
    padded = w.new_zeros(np_ * panel, 2 * k2)
    padded[:n, :k] = w
    return padded.reshape(np_, panel, k2, 2).transpose(1, 2).contiguous().reshape(-1)


class CpuSampler:
    """A TransformerForDiffusion packed for dp_fast::sampler_loop. Rebuild it after the weights change."""

    def __init__(self, model: TransformerForDiffusion, weight_dtype: torch.dtype = torch.float32,
                 bf16: Optional[str] = None):
        """bf16 (bf16 weights only): "amx", "dot" or "widen" (see the module docstring; each needs its CPU
        feature), or None: $DP_FAST_SAMPLER_BF16 if set, else the fastest this CPU has (`bf16_mode()`)."""
        _ext.require()
        asked = bf16 if bf16 is not None else _bf16_mode_from_env()
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype}")
        if asked is not None and asked not in BF16_MODES:
            raise ValueError(f"bf16 must be one of {list(BF16_MODES)} or None, got {asked!r}")
        if asked not in (None, "widen") and weight_dtype != torch.bfloat16:
            raise ValueError(f"bf16={asked!r} needs weight_dtype=torch.bfloat16, got {weight_dtype}")
        best = bf16_mode()
        order = list(BF16_MODES)
        if asked is not None and order.index(asked) < order.index(best):
            need = "AMX-BF16 (and the kernel's tile permission)" if asked == "amx" else "AVX512_BF16"
            raise ValueError(f"bf16={asked!r} needs the AVX-512 loop on a CPU with {need}; here the {isa()} "
                             f"copy runs and the best bf16 mode is {best!r}")
        if model.head.weight.device.type != "cpu" or model.head.weight.dtype != torch.float32:
            raise ValueError(f"the cpu sampler needs a float32 model on the CPU, got {model.head.weight.dtype} on "
                             f"{model.head.weight.device}")
        self.model = model
        self.weight_dtype = weight_dtype
        self.bf16 = (asked or best) if weight_dtype == torch.bfloat16 else None
        self._bf16_asked = asked
        self.encoder_only = model.encoder_only
        self.den = None if self.encoder_only else FastDenoiser(model, torch.float32)
        self._check_masks()
        self._pack()
        self._cache: Dict[tuple, list] = {}

    # ----------------------------------------------------------------------- packing (once per model)
    def _check_masks(self):
        """The op hard-codes the reference's masks (causal; memory token s visible to action token i iff
        i >= s - 1); make sure this model holds exactly those."""
        m = self.model
        if m.mask is not None and not torch.equal(m.mask.cpu(), additive_causal_mask(m.mask.shape[0])):
            raise ValueError("model.mask is not the causal mask the cpu sampler implements")
        if m.memory_mask is not None and not torch.equal(m.memory_mask.cpu(),
                                                         additive_memory_mask(*m.memory_mask.shape)):
            raise ValueError("model.memory_mask is not the memory mask the cpu sampler implements")

    def _pack(self):
        m = self.model
        fields, layer_fields, version, panel = _layout_fields()
        layers = m.encoder.layers if self.encoder_only else m.decoder.layers
        norms = [m.ln_f] + [mod for layer in layers for mod in layer.modules() if isinstance(mod, torch.nn.LayerNorm)]
        eps = {float(n.eps) for n in norms}
        if len(eps) != 1:
            raise ValueError(f"the cpu sampler takes one LayerNorm eps for the whole model, got {sorted(eps)}")
        self.ln_eps = eps.pop()
        w, p = _Blob(self.weight_dtype), _Blob(torch.float32)
        e = m.n_emb
        g = {"version": version, "E": e, "H": layers[0].self_attn.n_head, "L": len(layers),
             "F": layers[0].linear1.out_features, "P": 1 if self.encoder_only else 0,
             "has_ca": 0 if self.encoder_only else 1, "causal": int(m.mask is not None),
             "mem_mask": int(m.memory_mask is not None), "D": m.input_emb.in_features,
             "wdtype": WEIGHT_DTYPES[self.weight_dtype]}
        odd = e % 2 or (e // g["H"]) % 2 or g["F"] % 2
        if self.bf16 in ("amx", "dot") and odd:
            if self._bf16_asked is not None:
                raise ValueError(f"bf16={self.bf16!r} needs an even width, head size and FFN width, got n_emb={e}, "
                                 f"n_head={g['H']}, FFN {g['F']} (bf16='widen' runs bf16 weights in fp32)")
            self.bf16 = "widen"  # automatic choice: this model runs bf16 weights in fp32
        pack = lambda t: _panels(t, panel)
        if self.bf16 in ("amx", "dot"):
            g["wdtype"] = BF16_MODES[self.bf16]
            k_align = 32 if self.bf16 == "amx" else 2
            pack = lambda t: _pair_panels(t, panel, k_align)
        if m.head.out_features != g["D"]:
            raise ValueError("the cpu sampler needs input_dim == output_dim (a denoiser)")
        # Packed in the order the loop reads them: input embedding, layer by layer, head.
        g["w_in"] = w.add(pack(m.input_emb.weight))
        g["b_in"] = p.add(m.input_emb.bias)
        g["pos"] = p.add(m.pos_emb[0, g["P"]:])  # rows of the action tokens
        per_layer = []
        for layer in layers:
            sa = layer.self_attn
            # in-projection rows per head [q_h, k_h, v_h]: a tensor-parallel lane's heads are then one
            # contiguous column range of the qkv output
            qkv_rows = torch.arange(3 * e).reshape(3, g["H"], e // g["H"]).transpose(0, 1).reshape(-1)
            f = {"w_qkv": w.add(pack(sa.in_proj_weight[qkv_rows])), "w_o": w.add(pack(sa.out_proj.weight)),
                 "w_1": w.add(pack(layer.linear1.weight)), "w_2": w.add(pack(layer.linear2.weight)),
                 "ln_sa_w": p.add(layer.norm1.weight), "ln_sa_b": p.add(layer.norm1.bias),
                 "b_qkv": p.add(sa.in_proj_bias[qkv_rows]), "b_o": p.add(sa.out_proj.bias),
                 "ln_ca_w": -1, "ln_ca_b": -1, "ca_bo": -1}
            ff_norm = layer.norm2
            if not self.encoder_only:
                f.update(ln_ca_w=p.add(layer.norm2.weight), ln_ca_b=p.add(layer.norm2.bias),
                         ca_bo=p.add(layer.multihead_attn.out_proj.bias))
                ff_norm = layer.norm3
            f.update(ln_ff_w=p.add(ff_norm.weight), ln_ff_b=p.add(ff_norm.bias), b_1=p.add(layer.linear1.bias),
                     b_2=p.add(layer.linear2.bias))
            per_layer.append([f[name] for name in layer_fields])
        g["w_head"] = w.add(pack(m.head.weight))
        g["lnf_w"], g["lnf_b"] = p.add(m.ln_f.weight), p.add(m.ln_f.bias)
        g["b_head"] = p.add(m.head.bias)
        if self.bf16 == "amx":  # AMX tiles of a K-range may read 16 pair-rows past a weight (times zeros)
            w.add(torch.zeros(16 * 2 * panel))
        self.weights, self.params = w.tensor(), p.tensor()
        self._fields, self._base, self._per_layer = fields, g, [v for row in per_layer for v in row]

    @property
    def arithmetic(self) -> str:
        """What the matmuls run in, in words (describe_backends)."""
        if self.bf16 == "amx":
            return "bf16 AMX tiles (tdpbf16ps), fp32 accumulation"
        if self.bf16 == "dot":
            return "bf16 dot products (vdpbf16ps), fp32 accumulation"
        if self.weight_dtype == torch.float32:
            return "fp32"
        return f"{'bf16' if self.weight_dtype == torch.bfloat16 else 'fp16'} weights, fp32 arithmetic"

    # ----------------------------------------------------------------------- per call
    def _terms(self, cond: Optional[torch.Tensor], timesteps: torch.Tensor, batch: int):
        """(terms list, dims) for the op: see csrc/sampler_cpu.h."""
        m = self.model
        k = timesteps.shape[0]
        key = tuple(timesteps.tolist())
        if self.encoder_only:
            if key not in self._cache:
                with torch.no_grad():
                    prefix = m.time_token(timesteps)[:, 0] + m.pos_emb[0, 0]      # (K, E)
                self._cache = {key: [prefix.float().contiguous()]}
            return self._cache[key], {"Ss": 0, "So": 0, "Bs": 1}
        den = self.den
        n_layer, h, e = len(den.layers), den.n_head, den.E
        if den.mlp_cond:
            if key not in self._cache:
                time = den.time_terms(timesteps)                                   # per layer (K, H, E) ...
                self._cache = {key: [torch.stack([t[j] for t in time]).reshape(
                    (n_layer, k, 1, h, 1) + ((e,) if j != 1 else ())).contiguous() for j in range(3)]}
            step = self._cache[key]
            if cond is None:
                so = 0
                static = [torch.zeros(n_layer, batch, h, 0, e), torch.zeros(n_layer, batch, h, 0),
                          torch.zeros(n_layer, batch, h, 0, e)]
            else:
                prep = den.prepare(cond, timesteps)
                so = cond.shape[1]
                static = [torch.stack([o[j] for o in prep.obs]).reshape(
                    (n_layer, batch, h, so) + ((e,) if j != 1 else ())).contiguous() for j in range(3)]
            return step + static, {"Ss": 1, "So": so, "Bs": 1}
        # TransformerEncoder condition: the memory of every step is computed in one batched pass per call.
        prep = den.prepare(cond, timesteps)
        bs = prep.batch
        s = prep.time[0][0].shape[1] // h
        step = [torch.stack([t[j] for t in prep.time]).reshape(
            (n_layer, k, bs, h, s) + ((e,) if j != 1 else ())).contiguous() for j in range(3)]
        static = [torch.zeros(n_layer, batch, h, 0, e), torch.zeros(n_layer, batch, h, 0),
                  torch.zeros(n_layer, batch, h, 0, e)]
        return step + static, {"Ss": s, "So": 0, "Bs": bs}

    def sample(self, sched: NoiseScheduler, k: int, shape, cond: Optional[torch.Tensor],
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               inpaint: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """The K-step loop, arguments as ReferenceSampler.sample: noise (N, B, T, D) fp32 in the noise
        plan's order, or None to draw it from `generator` first (the reference's values). Returns the final
        sample (B, T, D)."""
        if noise is None:
            noise = draw_noise(sched.num_noise(k), shape, generator, "cpu", torch.float32)
        _, b, t, d = noise.shape
        timesteps = sched.timesteps(k)
        table = sched.step_table(k)
        plan = sched.noise_plan(k)
        if noise.shape[0] < sched.num_noise(k):
            raise ValueError(f"noise has {noise.shape[0]} draws, the loop needs {sched.num_noise(k)}")
        terms, dims = self._terms(cond, timesteps, b)
        g = dict(self._base, B=b, T=t, K=k, **dims)
        if d != g["D"]:
            raise ValueError(f"noise has {d} features per token, the model takes {g['D']}")
        if t > self.model.pos_emb.shape[1] - g["P"]:
            raise ValueError(f"trajectory length {t} exceeds the model's horizon {self.model.pos_emb.shape[1] - g['P']}")
        layout = [int(g[name]) for name in self._fields] + self._per_layer
        data, mask = inpaint if inpaint is not None else (None, None)
        return torch.ops.dp_fast.sampler_loop(
            noise[0].contiguous(), noise.contiguous(), torch.tensor(plan, dtype=torch.int64), table.float().cpu(),
            self.weights, self.params, layout, terms,
            None if data is None else data.float().contiguous(), None if mask is None else mask.contiguous(),
            self.ln_eps)
