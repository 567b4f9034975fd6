"""bf16 arithmetic in the C++ CPU loop (precision="bf16": AMX tiles on CPUs with AMX-BF16, vdpbf16ps dot
products on CPUs with AVX512_BF16) against a plain-PyTorch emulation of the same arithmetic: the reference
policy with the input rows and weights of exactly the loop's matmuls (input embedding, self-attention in- /
out-projection, FFN, head) rounded to bf16 and the products accumulated in fp32; everything else
(cross-attention with the condition, LayerNorm, softmax, scheduler step) stays fp32 in both.

The emulation and the op differ only in the order of the fp32 sums, and through them in an occasional bf16
rounding of an activation that lands on the other side of a tie. Over one step that keeps them far closer
than either is to fp32; over several steps the flipped roundings travel along the chain.
"""
import contextlib
import threading

import pytest
import torch
import torch.nn.functional as F

from dp_fast import _ext
from dp_fast.sampling.cpu import BF16_MODES, CpuSampler, bf16_mode
from tests.test_policy import random_obs
from tests.test_sampling import MODES, cfg_of, injected, pair

BEST = bf16_mode() if _ext.load() else "widen"
# the 16-bit arithmetics this CPU runs, fastest first ("widen" runs everywhere)
RUNNABLE = [m for m in list(BF16_MODES)[list(BF16_MODES).index(BEST):] if m != "widen"]
needs_bf16_arith = pytest.mark.skipif(not RUNNABLE, reason="needs the AVX-512 loop on a CPU with AVX512_BF16")
modes = pytest.mark.parametrize("arith", RUNNABLE or ["dot"])
_state = threading.local()


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


@contextlib.contextmanager
def bf16_matmuls(model):
    """Within: the loop's matmuls of `model` (a TransformerForDiffusion) take bf16-rounded inputs and weights."""
    linear = F.linear

    def rounded_linear(x, w, b=None):
        if getattr(_state, "on", False):
            return linear(_bf16(x), _bf16(w), b)
        return linear(x, w, b)

    def flagged(fn):
        def run(*args, **kwargs):
            _state.on = True
            try:
                return fn(*args, **kwargs)
            finally:
                _state.on = False
        return run

    layers = model.encoder.layers if model.encoder_only else model.decoder.layers
    mods = [model.input_emb, model.head]
    mods += [m for layer in layers for m in (layer.self_attn, layer.linear1, layer.linear2)]
    F.linear = rounded_linear
    try:
        for m in mods:
            m.forward = flagged(m.forward)  # an instance attribute over the class's forward
        yield
    finally:
        F.linear = linear
        for m in mods:
            del m.forward


def _actions(policy, obs, noise):
    with torch.no_grad():
        return policy.predict_action(obs, noise=noise)["action_pred"]


def _bf16_pair(cfg, batch, arith):
    ref, fast = pair(cfg)
    # the bf16 loop under an fp32 encoder (precision="bf16" would also round the encoder's convolutions):
    # the emulation below rounds only the loop's matmuls
    fast.resolution  # resolved first: resolving drops a sampler set before
    fast._sampler = (fast._weights_key(), CpuSampler(fast.model, torch.bfloat16, bf16=arith))
    assert {"amx": "tdpbf16ps", "dot": "vdpbf16ps"}[arith] in fast.describe_backends()["sampler_impl"]
    obs, noise = random_obs(cfg, batch), injected(ref, batch)
    return ref, fast, obs, noise


@needs_bf16_arith
@modes
@pytest.mark.parametrize("steps", [1, 8])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("mode", ["default", "cond_encoder", "encoder_only", "ddim", "horizon16_act10_odd_width"])
def test_bf16_matches_bf16_emulation(mode, batch, steps, arith):
    """Measured on a Sapphire Rapids core (AMX and vdpbf16ps alike): over one step the op's mean distance to
    the emulation is <= 2% of the emulation's to fp32 (0 at B=1: the same numbers); over 8 steps the few
    flipped roundings travel along the chain and it is 0-50%, so 8 steps only check that nothing grows."""
    cfg = cfg_of(**MODES[mode], num_inference_steps=steps)
    ref, fast, obs, noise = _bf16_pair(cfg, batch, arith)
    exact = _actions(ref, obs, noise)
    with bf16_matmuls(ref.model):
        emulated = _actions(ref, obs, noise)
    got = _actions(fast, obs, noise)
    scale = max(exact.abs().max().item(), 1.0)
    to_fp32 = (got - exact).abs()
    to_emulation = (got - emulated).abs()
    emulation_to_fp32 = (emulated - exact).abs()
    # a real deviation from fp32, of the size the emulation shows ...
    assert 0 < to_fp32.max().item() <= 0.05 * scale, (to_fp32.max().item(), scale)
    assert emulation_to_fp32.mean().item() > 0
    # ... and the op computes what the emulation computes, up to fp32 summation order (and the bf16
    # roundings of activations that it moves across a tie)
    ratio = to_emulation.mean().item() / emulation_to_fp32.mean().item()
    assert ratio <= (0.05 if steps == 1 else 0.7), ratio
    assert to_emulation.max().item() <= (0.5 if steps == 1 else 0.8) * emulation_to_fp32.max().item()


@needs_bf16_arith
@modes
def test_bf16_and_widened_weights_are_both_selectable(arith):
    """bf16="widen" keeps the bf16-weights / fp32-arithmetic mode, and the emulation tells the two apart
    (over one step, where the op is the emulation)."""
    cfg = cfg_of(num_inference_steps=1)
    ref, fast, obs, noise = _bf16_pair(cfg, 2, arith)
    exact = _actions(ref, obs, noise)
    with bf16_matmuls(ref.model):
        emulated = _actions(ref, obs, noise)
    dot = _actions(fast, obs, noise)
    fast._sampler = (fast._weights_key(), CpuSampler(fast.model, torch.bfloat16, bf16="widen"))
    assert "fp32 arithmetic" in fast.describe_backends()["sampler_impl"]
    widened = _actions(fast, obs, noise)
    base = (emulated - exact).abs().mean().item()
    # the widened mode rounds the weights as the emulation does, not the activations
    assert (dot - emulated).abs().mean().item() <= 0.05 * base
    assert (widened - emulated).abs().mean().item() >= 0.2 * base


@pytest.mark.skipif(not _ext.load(), reason="needs the cpu sampler")
def test_bf16_refused_where_unavailable_or_misused(monkeypatch):
    cfg = cfg_of()
    _, fast = pair(cfg)
    with pytest.raises(ValueError, match="needs weight_dtype=torch.bfloat16"):
        CpuSampler(fast.model, torch.float16, bf16="dot")
    with pytest.raises(ValueError, match="one of"):
        CpuSampler(fast.model, torch.bfloat16, bf16="fp8")
    monkeypatch.setenv("DP_FAST_SAMPLER_BF16", "tiles")
    with pytest.raises(ValueError, match="DP_FAST_SAMPLER_BF16"):
        CpuSampler(fast.model, torch.bfloat16)
    monkeypatch.delenv("DP_FAST_SAMPLER_BF16")
    monkeypatch.setenv("DP_FAST_SAMPLER_ISA", "generic")
    assert bf16_mode() == "widen"
    with pytest.raises(ValueError, match="AVX512_BF16"):
        CpuSampler(fast.model, torch.bfloat16, bf16="dot")
    with pytest.raises(ValueError, match="AMX-BF16"):
        CpuSampler(fast.model, torch.bfloat16, bf16="amx")
    # automatic choice on such a CPU: bf16 weights in fp32, and it says so
    assert CpuSampler(fast.model, torch.bfloat16).arithmetic == "bf16 weights, fp32 arithmetic"
