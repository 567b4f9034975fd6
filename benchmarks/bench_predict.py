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
Rows for the fast paths are added by ROW_FACTORIES below.

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

from dp_fast import DiffusionPolicy, PolicyConfig

GROUPS = {
    # name: (batch, scheduler overrides)
    "predict_seed_B1_ddpm100": (1, {}),
    "predict_seed_B8_ddpm100": (8, {}),
}
ROUNDS = {1: 5, 8: 3}


def _seed_policy(sched_overrides: dict) -> DiffusionPolicy:
    torch.manual_seed(0)
    cfg = PolicyConfig(**sched_overrides) if sched_overrides else PolicyConfig()
    return DiffusionPolicy(cfg, backend="reference").eval()


def _obs(policy: DiffusionPolicy, batch: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    obs = {}
    for key, meta in policy.config.shape_meta["obs"].items():
        shape = (batch, policy.n_obs_steps, *meta["shape"])
        if meta.get("type", "low_dim") == "rgb":
            obs[key] = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        else:
            obs[key] = torch.randn(shape, generator=g) * 0.1
    return obs


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


def _reference_row(policy):
    return policy


def _original_row(policy):
    orig = _original_denoiser(policy)
    if orig is None:
        pytest.skip("set DP_FAST_ORIGINAL_SRC to time the original TransformerForDiffusion (see module doc)")
    p = copy.deepcopy(policy)
    p.model = orig
    return p


# row name -> factory(reference policy) -> object with predict_action(obs, noise=) (skip inside if unavailable)
ROW_FACTORIES: Dict[str, Callable] = {
    "reference": _reference_row,
    "original_denoiser": _original_row,
}

_cache: Dict[str, tuple] = {}


def _group_setup(group: str):
    """(reference policy, obs, noise, reference actions) per group, built once per session."""
    if group not in _cache:
        batch, overrides = GROUPS[group]
        policy = _seed_policy(overrides)
        obs = _obs(policy, batch)
        g = torch.Generator().manual_seed(2)
        noise = torch.randn(policy.noise_draws(), *policy.trajectory_shape(batch), generator=g)
        with torch.no_grad():
            ref = policy.predict_action(obs, noise=noise)["action"]
        _cache[group] = (policy, obs, noise, ref)
    return _cache[group]


@pytest.mark.parametrize("row", list(ROW_FACTORIES))
@pytest.mark.parametrize("group", list(GROUPS))
def test_predict_action(benchmark, group, row):
    policy, obs, noise, ref = _group_setup(group)
    runner = ROW_FACTORIES[row](policy)
    batch = GROUPS[group][0]
    with torch.no_grad():
        out = runner.predict_action(obs, noise=noise)["action"]
    err = (out.float() - ref).abs().max().item()
    assert err <= 1e-4, f"{row}: actions differ from the reference by {err:.3g}"

    def call():
        with torch.no_grad():
            return runner.predict_action(obs, noise=noise)

    benchmark.group = group
    benchmark.extra_info.update(batch=batch, k=policy.num_inference_steps, threads=torch.get_num_threads(),
                                max_abs_err_vs_reference=err)
    benchmark.pedantic(call, rounds=ROUNDS[batch], iterations=1, warmup_rounds=1)
