"""The observation encoder of the seed configuration (two 84x84 cameras, crop 76, ResNet18-GroupNorm each,
n_obs_steps 2) on the CPU: the reference, the `cpu` backend's oneDNN encoder and the peers, in one run.

Groups encoder_B1 / encoder_B8 (B x 2 frames per camera). Every row is checked once against the
reference's features (atol 1e-4) before it is timed. Torch rows time DiffusionPolicy.encode_obs on
normalized observations; the ONNX rows time encoder.onnx on float32 [0, 1] observations (its first op is
the same normalization).

Rows:
  reference       plain PyTorch (nn.Conv2d on NCHW: oneDNN with per-call weight and layout reorders)
  onednn          backend "cpu": weights packed once per batch size, channels_last (models/vision_onednn.py)
  onednn_bf16     the same with precision="bf16" where oneDNN has native bf16 (AVX512_BF16 / AMX): bf16
                  convolutions, fp32 between them; checked against a loose bound (TOL_BF16), its error
                  against the reference in extra_info
  torch_compile   torch.compile(obs_encoder) with inductor's freezing (weights packed, GroupNorm fused);
                  compile time in extra_info["compile_s"]
  onnxruntime / openvino   encoder.onnx from dp_fast.export_onnx (benchmarks/peers.py); export_s in extra_info

Run: pytest benchmarks/bench_encoder.py --benchmark-only
"""
from __future__ import annotations

import copy
import time

import numpy as np
import pytest
import torch
import torch._inductor.config as inductor_config

from dp_fast import DiffusionPolicy, PolicyConfig, available_backends
from dp_fast.models.vision_onednn import native_bf16

from benchmarks._common import cpu_row
from benchmarks.peers import export_for, obs_feed, session_factory

GROUPS = {"encoder_B1": 1, "encoder_B8": 8}
ROUNDS = {1: 10, 8: 4}
TOL = 1e-4
TOL_BF16 = 0.1  # catches a broken kernel, not rounding (the features are O(1))
_cache = {}


def _setup(batch: int):
    if batch not in _cache:
        torch.manual_seed(0)
        policy = DiffusionPolicy(PolicyConfig(), backend="reference").eval()
        g = torch.Generator().manual_seed(1)
        obs = {}
        for key, meta in policy.config.shape_meta["obs"].items():
            shape = (batch, policy.n_obs_steps, *meta["shape"])
            obs[key] = torch.rand(shape, generator=g) if meta.get("type") == "rgb" else torch.randn(shape, generator=g)
        nobs, _ = policy.prepare_obs(obs)
        with torch.no_grad():
            ref = policy.encode_obs(nobs, batch)
        _cache[batch] = (policy, obs, nobs, ref)
    return _cache[batch]


def _torch_runner(policy, nobs, batch):
    return lambda: policy.encode_obs(nobs, batch)


def _row(name, policy, obs, nobs, batch, info):
    if name == "reference":
        return _torch_runner(policy, nobs, batch)
    if name in ("onednn", "onednn_bf16"):
        info_cpu = available_backends()["cpu"]
        if not info_cpu["available"]:
            pytest.skip(f"backend 'cpu' unavailable: {info_cpu['reason']}")
        if name == "onednn_bf16" and not native_bf16():
            pytest.skip("oneDNN has no native bf16 on this CPU (precision='bf16' keeps the encoder in fp32)")
        fast = DiffusionPolicy(policy.config, backend="cpu", precision="bf16" if name == "onednn_bf16" else "fp32")
        fast.load_state_dict(policy.state_dict())
        fast.eval()
        if fast.resolution.encoder != "onednn":
            pytest.skip(f"the cpu backend's encoder is {fast.resolution.encoder!r} here")
        return _torch_runner(fast, nobs, batch)
    if name == "torch_compile":
        enc = torch.compile(copy.deepcopy(policy.obs_encoder))
        t0 = time.perf_counter()
        with inductor_config.patch(freezing=True), torch.no_grad():
            enc(nobs, crop_backend="reference")
        info["compile_s"] = round(time.perf_counter() - t0, 2)
        return lambda: enc(nobs, crop_backend="reference").reshape(batch, policy.n_obs_steps, -1)
    out, manifest, export_s = export_for(policy, batch, ["encoder", "denoiser"])
    info["export_s"] = round(export_s, 2)
    run = session_factory(name)(out / "encoder.onnx")
    feed = obs_feed(manifest, obs)
    return lambda: torch.from_numpy(np.asarray(run(feed)[0]))


@cpu_row
@pytest.mark.parametrize("row", ["reference", "onednn", "onednn_bf16", "torch_compile", "onnxruntime", "openvino"])
@pytest.mark.parametrize("group", list(GROUPS))
def test_encoder(benchmark, group, row):
    batch = GROUPS[group]
    policy, obs, nobs, ref = _setup(batch)
    info = {}
    call = _row(row, policy, obs, nobs, batch, info)

    def timed():
        with torch.no_grad():
            return call()
    err = (timed() - ref).abs().max().item()
    tol = TOL_BF16 if row == "onednn_bf16" else TOL
    assert err <= tol, f"{row}: features differ from the reference by {err:.3g}"
    benchmark.group = group
    benchmark.extra_info.update(batch=batch, images=batch * policy.n_obs_steps * len(policy.config.rgb_keys),
                                threads=torch.get_num_threads(), max_abs_err_vs_reference=err, **info)
    benchmark.pedantic(timed, rounds=ROUNDS[batch], iterations=1, warmup_rounds=1)
