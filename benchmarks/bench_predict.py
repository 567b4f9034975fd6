"""Full predict_action latency of the seed configuration (two 84x84 cameras, 8 layers x 256, horizon 10).

One benchmark group per (batch, scheduler); every group has the `reference` backend as a row, so the
speed-up of each fast path is read in one run on one machine. All rows of a group see the same
observation and the same injected noise, and each row is checked once against the reference's actions
before it is timed (atol 1e-4).

Rows:
  reference           dp_fast's plain-PyTorch policy (the baseline of every fast path)
  original_denoiser   the same policy with its denoiser swapped for the ORIGINAL diffusion_policy
                      TransformerForDiffusion class (same weights). Only when $DP_FAST_ORIGINAL_SRC names a
                      directory holding `diffusion_policy/model/diffusion/transformer_for_diffusion.py`,
                      `.../positional_embedding.py` and `diffusion_policy/model/common/module_attr_mixin.py`
                      (e.g. extracted with `git show HEAD:<path>` from a clone of real-stanford/diffusion_policy).
                      It shows that the reference is no slower than the original on the machine at hand.
  cpu_fp32 / cpu_bf16 / cpu_fp16   backend "cpu": the whole loop in one C++ op (dp_fast/sampling/cpu.py),
                      weights in 32 / 16 bits; cpu_bf16 runs the CPU's fastest bf16 arithmetic (AMX tiles,
                      else vdpbf16ps dot products, else bf16 weights in fp32; the encoder's convolutions in
                      bf16 where oneDNN has native bf16)
  cpu_bf16_dot / cpu_bf16_widen   the loop forced to vdpbf16ps / to bf16 weights widened to fp32
                      (DP_FAST_SAMPLER_BF16=dot / widen), rows beside the fastest one
  cuda_graph_fp32 / _bf16 / triton_fp32   CUDA rows (captured K-step loop); capture time in extra_info
  torch_compile, onnxruntime_loop / _graph, openvino_loop / _graph   the peers a user would pick instead
                      (benchmarks/peers.py: torch.compile of the reference denoiser; the ONNX export in
                      ONNX Runtime and OpenVINO, loop in Python or the whole graph); CPU rows
Groups are per (batch, scheduler, device): CUDA groups only where a GPU is present, CPU groups unless
DP_FAST_BENCH_GPU_ONLY=1. The 16-bit rows record their action error against the fp32 reference in extra_info
(max_abs_err_vs_reference). On CUDA the rounds are capped by --benchmark-max-time (benchmarks/_common.py).

Run: pytest benchmarks/bench_predict.py --benchmark-only
"""
from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest
import torch

from dp_fast import DiffusionPolicy, PolicyConfig, SchedulerConfig, available_backends

from dp_fast.sampling.cpu import BF16_MODES, bf16_mode as cpu_bf16_mode

from benchmarks._common import devices, pedantic
from benchmarks.peers import peer_rows

_DDIM10 = {"num_inference_steps": 10, "scheduler": SchedulerConfig(kind="ddim")}
GROUPS = {
    # name: (batch, config overrides)
    "predict_seed_B1_ddpm100": (1, {}),
    "predict_seed_B8_ddpm100": (8, {}),
    "predict_seed_B1_ddim10": (1, _DDIM10),
    "predict_seed_B8_ddim10": (8, _DDIM10),
}
ROUNDS = {1: 5, 8: 3}
DEVICES = devices()
# fp32 fast paths must give the reference's actions; 16-bit ones are reported with their error and only
# checked against a loose bound that catches a broken kernel, not rounding.
TOL = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.05}


def _seed_policy(overrides: dict, device: str) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = PolicyConfig(**overrides) if overrides else PolicyConfig()
    return DiffusionPolicy(cfg, backend="reference").to(device).eval()


def _obs(policy: DiffusionPolicy, batch: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obs = {}
    for key, meta in policy.config.shape_meta["obs"].items():
        shape = (batch, policy.n_obs_steps, *meta["shape"])
        if meta.get("type", "low_dim") == "rgb":
            obs[key] = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        else:
            obs[key] = torch.randn(shape, generator=g) * 0.1
    return {k: v.to(policy.device) for k, v in obs.items()}


def _original_denoiser(policy: DiffusionPolicy) -> Optional[torch.nn.Module]:
    src = os.environ.get("DP_FAST_ORIGINAL_SRC")
    if not src:
        return None
    if not (Path(src) / "diffusion_policy/model/diffusion/transformer_for_diffusion.py").is_file():
        raise FileNotFoundError(f"DP_FAST_ORIGINAL_SRC={src!r} does not hold "
                                "diffusion_policy/model/diffusion/transformer_for_diffusion.py")
    if src not in sys.path:
        sys.path.insert(0, src)
    from diffusion_policy.model.diffusion.transformer_for_diffusion import TransformerForDiffusion

    c, m = policy.config, policy.model
    orig = TransformerForDiffusion(
        input_dim=m.input_emb.in_features, output_dim=m.head.out_features, horizon=m.horizon,
        n_obs_steps=c.n_obs_steps, cond_dim=m.cond_obs_emb.in_features if m.cond_obs_emb is not None else 0,
        n_layer=c.n_layer, n_head=c.n_head, n_emb=c.n_emb, p_drop_emb=c.p_drop_emb, p_drop_attn=c.p_drop_attn,
        causal_attn=c.causal_attn, time_as_cond=c.time_as_cond, obs_as_cond=c.obs_as_cond,
        n_cond_layers=c.n_cond_layers)
    missing, unexpected = orig.load_state_dict(m.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "_dummy_variable"]:
        raise RuntimeError(f"original denoiser does not take dp_fast's weights: missing {missing}, "
                           f"unexpected {unexpected}")
    return orig.eval()


def _reference_row(policy, batch):
    return policy


def _original_row(policy, batch):
    orig = _original_denoiser(policy)
    if orig is None:
        pytest.skip("set DP_FAST_ORIGINAL_SRC to time the original TransformerForDiffusion (see module doc)")
    p = copy.deepcopy(policy)
    p.model = orig
    return p


def _fast_row(backend: str, precision: str, devices=("cpu", "cuda"), bf16_mode: Optional[str] = None):
    """A copy of the policy on `backend` with `precision` (skipped where the backend cannot run); bf16_mode:
    DP_FAST_SAMPLER_BF16 for the cpu rows ("auto" unless given)."""
    def make(policy, batch):
        if policy.device.type not in devices:
            pytest.skip(f"backend {backend!r} is not a {policy.device.type} row")
        info = available_backends().get(backend, {"available": False, "reason": "unknown backend"})
        if not info["available"]:
            pytest.skip(f"backend {backend!r} unavailable: {info['reason']}")
        if backend == "triton" and policy.device.type == "cpu":
            pytest.skip("triton on the CPU is the interpreter: a correctness tool, not a timing row")
        p = DiffusionPolicy(policy.config, backend=backend, precision=precision)
        p.load_state_dict(policy.state_dict())
        p = p.to(policy.device).eval()
        if bf16_mode not in (None, "auto"):
            best = cpu_bf16_mode()
            if list(BF16_MODES).index(bf16_mode) < list(BF16_MODES).index(best):
                pytest.skip(f"bf16 arithmetic {bf16_mode!r} needs a CPU feature this one lacks (best: {best!r})")
        if bf16_mode is not None:  # the cpu sampler reads it when it packs the weights: pack now
            saved = os.environ.get("DP_FAST_SAMPLER_BF16")
            os.environ["DP_FAST_SAMPLER_BF16"] = bf16_mode
            try:
                p.sampler
            finally:
                if saved is None:
                    del os.environ["DP_FAST_SAMPLER_BF16"]
                else:
                    os.environ["DP_FAST_SAMPLER_BF16"] = saved
        return p
    make.precision = precision
    return make


# row name -> factory(reference policy, batch) -> object with predict_action(obs, noise=) (skip inside if
# unavailable)
ROW_FACTORIES: Dict[str, Callable] = {
    "reference": _reference_row,
    "original_denoiser": _original_row,
    "cpu_fp32": _fast_row("cpu", "fp32", ("cpu",)),
    "cpu_bf16": _fast_row("cpu", "bf16", ("cpu",), "auto"),
    "cpu_bf16_dot": _fast_row("cpu", "bf16", ("cpu",), "dot"),
    "cpu_bf16_widen": _fast_row("cpu", "bf16", ("cpu",), "widen"),
    "cpu_fp16": _fast_row("cpu", "fp16", ("cpu",)),
    "cuda_graph_fp32": _fast_row("cuda", "fp32", ("cuda",)),
    "cuda_graph_bf16": _fast_row("cuda", "bf16", ("cuda",)),
    "triton_fp32": _fast_row("triton", "fp32", ("cuda",)),
    **peer_rows(),
}

_cache: Dict[str, tuple] = {}


def _group_setup(group: str, device: str):
    """(reference policy, obs, noise, reference actions) per group and device, built once per session."""
    if (group, device) not in _cache:
        batch, overrides = GROUPS[group]
        policy = _seed_policy(overrides, device)
        obs = _obs(policy, batch)
        g = torch.Generator().manual_seed(2)
        noise = torch.randn(policy.noise_draws(), *policy.trajectory_shape(batch), generator=g).to(device)
        with torch.no_grad():
            ref = policy.predict_action(obs, noise=noise)["action"]
        _cache[(group, device)] = (policy, obs, noise, ref)
    return _cache[(group, device)]


@pytest.mark.parametrize("row", list(ROW_FACTORIES))
@pytest.mark.parametrize("group", list(GROUPS))
@pytest.mark.parametrize("device", DEVICES)
def test_predict_action(benchmark, device, group, row):
    policy, obs, noise, ref = _group_setup(group, device)
    factory = ROW_FACTORIES[row]
    batch = GROUPS[group][0]
    runner = factory(policy, batch)
    precision = getattr(factory, "precision", "fp32")
    cuda = device == "cuda"
    with torch.no_grad():
        out = runner.predict_action(obs, noise=noise)["action"]   # also captures a CUDA graph
    err = (out.float() - ref).abs().max().item()
    assert err <= TOL[precision], f"{row}: actions differ from the reference by {err:.3g}"

    def call():
        with torch.no_grad():
            out = runner.predict_action(obs, noise=noise)
        if cuda:
            torch.cuda.synchronize()
        return out

    benchmark.group = f"{group}_{device}"
    benchmark.extra_info.update(batch=batch, k=policy.num_inference_steps, device=device, precision=precision,
                                threads=torch.get_num_threads(), max_abs_err_vs_reference=err)
    for name in ("compile_s", "export_s"):  # the peers' one-off costs, outside the timed calls
        if getattr(runner, name, None) is not None:
            benchmark.extra_info[name] = round(getattr(runner, name), 2)
    capture = getattr(getattr(runner, "sampler", None), "capture_seconds", {})
    if capture:  # once per (batch, K) key, outside the steady state timed below
        benchmark.extra_info["capture_s"] = round(sum(capture.values()), 4)
    pedantic(benchmark, call, rounds=ROUNDS[batch] * (20 if cuda else 1), iterations=1, warmup_rounds=1, cuda=cuda)
