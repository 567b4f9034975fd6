"""Fast samplers against the reference loop: the C++ CPU loop (backend "cpu") and the CUDA-graph
sampler's body run uncaptured on the CPU (what backend "triton" runs on a CPU policy).

Every test feeds the same injected noise to the reference and the fast path; fp32 must agree to 1e-5
(float reassociation only), 16-bit weights within a bound measured against fp32.
"""

import pytest
import torch

import dp_fast
from dp_fast import DiffusionPolicy, PolicyConfig, SchedulerConfig
from dp_fast import _ext
from dp_fast.backends import BackendUnavailable
from dp_fast.sampling import GraphSampler, make_sampler
from dp_fast.sampling.cpu import isa as sampler_isa
from tests.test_policy import random_obs

needs_cpu_sampler = pytest.mark.skipif(not _ext.load(), reason=f"cpu sampler unavailable: {_ext.unavailable_reason()}")

META7 = {"obs": {"cam": {"shape": [3, 24, 24], "type": "rgb"}, "pos": {"shape": [3]}}, "action": {"shape": [7]}}
META10 = {"obs": {"cam": {"shape": [3, 24, 20], "type": "rgb"}, "grip": {"shape": [2]}}, "action": {"shape": [10]}}


def cfg_of(**kw):
    base = dict(shape_meta=META7, horizon=10, n_obs_steps=2, n_action_steps=8, crop_shape=(20, 20),
                n_layer=2, n_head=4, n_emb=64, vision_width=16, num_inference_steps=8,
                scheduler=SchedulerConfig(num_train_timesteps=16))
    base.update(kw)
    return PolicyConfig(**base)


MODES = {
    "default": {},
    "cond_encoder": dict(n_cond_layers=2),
    "not_causal": dict(causal_attn=False),
    "action_steps_only": dict(pred_action_steps_only=True),
    "inpaint_decoder": dict(obs_as_cond=False),
    "encoder_only": dict(obs_as_cond=False, time_as_cond=False),
    "encoder_only_not_causal": dict(obs_as_cond=False, time_as_cond=False, causal_attn=False),
    "ddim": dict(scheduler=SchedulerConfig(kind="ddim", num_train_timesteps=16)),
    "ddim_eta1": dict(scheduler=SchedulerConfig(kind="ddim", num_train_timesteps=16, eta=1.0, set_alpha_to_one=False)),
    "sample_pred": dict(scheduler=SchedulerConfig(num_train_timesteps=16, prediction_type="sample", clip_sample=False)),
    "horizon16_act10_odd_width": dict(shape_meta=META10, horizon=16, n_obs_steps=3, n_action_steps=10,
                                      crop_shape=(21, 17), n_emb=48, n_head=3),
}


def pair(cfg, backend="cpu", seed=0):
    torch.manual_seed(seed)
    ref = DiffusionPolicy(cfg, backend="reference").eval()
    # non-trivial normalizer and LayerNorm affine params, so that a missed term shows
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.02 * torch.randn_like(p))
    fast = DiffusionPolicy(cfg, backend=backend).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def injected(policy, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(policy.noise_draws(), *policy.trajectory_shape(batch), generator=g)


@needs_cpu_sampler
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("mode", list(MODES))
def test_cpu_sampler_matches_reference(mode, batch):
    cfg = cfg_of(**MODES[mode])
    ref, fast = pair(cfg)
    assert fast.describe_backends()["sampler"] == "cpu"
    obs = random_obs(cfg, batch)
    noise = injected(ref, batch)
    with torch.no_grad():
        a = ref.predict_action(obs, noise=noise)["action_pred"]
        b = fast.predict_action(obs, noise=noise)["action_pred"]
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-5, mode


@needs_cpu_sampler
def test_cpu_sampler_generator_draws_like_reference():
    cfg = cfg_of()
    ref, fast = pair(cfg)
    obs = random_obs(cfg, 2)
    with torch.no_grad():
        a = ref.predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
        b = fast.predict_action(obs, generator=torch.Generator().manual_seed(3))["action"]
        c = fast.predict_action(obs, generator=torch.Generator().manual_seed(4))["action"]
    assert (a - b).abs().max().item() <= 1e-5
    assert (b - c).abs().max().item() > 1e-3  # the generator is really used


@needs_cpu_sampler
@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("parallel", ["", "force"])
def test_cpu_sampler_isa_and_threading(isa, parallel, monkeypatch):
    """Every compiled copy of the loop, on one lane and on forced tensor-parallel / batch lanes."""
    monkeypatch.delenv("DP_FAST_SAMPLER_ISA", raising=False)
    best = sampler_isa()  # what the hardware offers, asked before forcing a copy
    if isa == "avx512" and best != "avx512":
        pytest.skip("this CPU has no AVX-512")
    if isa == "avx2" and best == "generic":
        pytest.skip("this CPU has no AVX2 / FMA")
    monkeypatch.setenv("DP_FAST_SAMPLER_ISA", isa)
    monkeypatch.setenv("DP_FAST_SAMPLER_PARALLEL", parallel)
    assert sampler_isa() == isa
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for mode, batch in (("default", 1), ("default", 3), ("encoder_only", 1), ("cond_encoder", 2)):
            cfg = cfg_of(**MODES[mode])
            ref, fast = pair(cfg)
            obs = random_obs(cfg, batch)
            noise = injected(ref, batch)
            with torch.no_grad():
                a = ref.predict_action(obs, noise=noise)["action_pred"]
                b = fast.predict_action(obs, noise=noise)["action_pred"]
            assert (a - b).abs().max().item() <= 1e-5, (mode, batch)
    finally:
        torch.set_num_threads(threads)


@needs_cpu_sampler
def test_seed_configuration_b1_matches_reference():
    """The headline configuration itself (two 84x84 cameras, 8 x 256, K = 100 DDPM)."""
    ref, fast = pair(PolicyConfig())
    obs = random_obs(ref.config, 1)
    noise = injected(ref, 1)
    with torch.no_grad():
        a = ref.predict_action(obs, noise=noise)["action"]
        b = fast.predict_action(obs, noise=noise)["action"]
    assert (a - b).abs().max().item() <= 1e-4
    assert fast.describe_backends()["sampler"] == "cpu"


@needs_cpu_sampler
def test_packed_weights_follow_parameter_updates():
    """An optimizer step or load_state_dict changes the weights: the packed copy must be rebuilt."""
    cfg = cfg_of()
    ref, fast = pair(cfg)
    obs = random_obs(cfg, 2)
    noise = injected(ref, 2)
    with torch.no_grad():
        before = fast.predict_action(obs, noise=noise)["action"]
        for p in list(fast.model.parameters())[::3]:
            p.mul_(1.1)  # in place, as an optimizer does
        ref.load_state_dict(fast.state_dict())
        a = ref.predict_action(obs, noise=noise)["action"]
        b = fast.predict_action(obs, noise=noise)["action"]
    assert (a - b).abs().max().item() <= 1e-5
    assert (b - before).abs().max().item() > 1e-4


@needs_cpu_sampler
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_weights_close_to_fp32(precision):
    cfg = cfg_of()
    ref, fast = pair(cfg)
    fast.set_precision(precision)
    obs = random_obs(cfg, 3)
    noise = injected(ref, 3)
    with torch.no_grad():
        a = ref.predict_action(obs, noise=noise)["action_pred"]
        b = fast.predict_action(obs, noise=noise)["action_pred"]
    err = (a - b).abs().max().item()
    scale = a.abs().max().item()
    # 16-bit weights: a real but small deviation (bf16 has 8 mantissa bits, fp16 11)
    assert 0 < err <= (0.05 if precision == "bf16" else 0.01) * max(scale, 1.0), err
    assert "bf16" in fast.describe_backends()["sampler_impl"] or precision == "fp16"


def test_reference_backend_rejects_low_precision():
    with pytest.raises(ValueError, match="fp32 ground truth"):
        DiffusionPolicy(cfg_of(), backend="reference", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        DiffusionPolicy(cfg_of(), backend="reference", precision="fp8")


@needs_cpu_sampler
def test_cpu_sampler_rejects_bad_arguments():
    cfg = cfg_of()
    _, fast = pair(cfg)
    runner = make_sampler("cpu", fast.model)
    sched = fast.noise_scheduler
    k = fast.num_inference_steps
    shape = fast.trajectory_shape(2)
    with pytest.raises(ValueError, match="features per token"):
        runner.sample(sched, k, shape, None, torch.randn(sched.num_noise(k), 2, shape[1], shape[2] + 1))
    with pytest.raises(ValueError, match="draws"):
        runner.sample(sched, k, shape, None, torch.randn(1, *shape))
    with pytest.raises(RuntimeError, match="`sample` must be float32"):
        runner.sample(sched, k, shape, None, torch.randn(sched.num_noise(k), *shape, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="layout"):
        torch.ops.dp_fast.sampler_loop(
            torch.zeros(shape), torch.zeros(1, *shape), torch.zeros(k, dtype=torch.int64),
            torch.zeros(k, 10), runner.weights, runner.params, [1] * 30, [], None, None, 1e-5)


@pytest.mark.parametrize("mode", ["default", "cond_encoder", "inpaint_decoder", "encoder_only", "ddim_eta1"])
def test_graph_sampler_body_matches_reference(mode):
    """The CUDA-graph sampler's loop, run uncaptured on the CPU, against the reference loop."""
    cfg = cfg_of(**MODES[mode])
    ref, _ = pair(cfg, backend="reference")
    obs = random_obs(cfg, 3)
    noise = injected(ref, 3)
    with torch.no_grad():
        nobs, b = ref.prepare_obs(obs)
        feats = ref.encode_obs(nobs, b)
        a = ref.sample(feats, noise)
        cond, data, mask = ref._condition(feats)
        gs = GraphSampler(ref.model, torch.float32, capture=False)
        inpaint = None if mask is None else (data, mask)
        b2 = gs.sample(ref.noise_scheduler, ref.num_inference_steps, ref.trajectory_shape(3), cond, noise, None, inpaint)
    assert (a - b2).abs().max().item() <= 1e-5


@needs_cpu_sampler
def test_auto_on_cpu_selects_the_cpu_sampler(monkeypatch):
    monkeypatch.delenv("DP_FAST_BACKEND", raising=False)
    p = DiffusionPolicy(cfg_of(), backend="auto")
    assert p.backend == "cpu"
    assert p.describe_backends()["sampler"] == "cpu"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("mode", ["default", "encoder_only", "inpaint_decoder"])
@pytest.mark.parametrize("batch", [1, 8])
def test_cuda_graph_sampler_matches_reference(mode, batch, backend):
    """Captured once, replayed: same actions as the reference for injected noise; fresh noise per call
    from in-graph RNG; capture cost recorded separately."""
    cfg = cfg_of(**MODES[mode])
    if not dp_fast.available_backends()[backend]["available"]:
        pytest.skip(dp_fast.available_backends()[backend]["reason"])
    ref, fast = pair(cfg, backend=backend)
    ref, fast = ref.cuda(), fast.cuda()
    obs = {k: v.cuda() for k, v in random_obs(cfg, batch).items()}
    noise = injected(ref, batch).cuda()
    with torch.no_grad():
        a = ref.predict_action(obs, noise=noise)["action_pred"]
        b1 = fast.predict_action(obs, noise=noise)["action_pred"]
        b2 = fast.predict_action(obs, noise=noise)["action_pred"]   # replay
        r1 = fast.predict_action(obs)["action_pred"]
        r2 = fast.predict_action(obs)["action_pred"]
    torch.cuda.synchronize()
    assert (a - b1).abs().max().item() <= 1e-4 and torch.equal(b1, b2)
    assert not torch.equal(r1, r2)
    runner = fast.sampler
    assert isinstance(runner, GraphSampler) and runner.capture_seconds and all(s > 0 for s in runner.capture_seconds.values())


AVAILABLE = [name for name, info in dp_fast.available_backends().items() if info["available"] and name != "auto"]


def device_for(backend: str) -> str:
    """Where a policy of `backend` runs: cuda needs a CUDA device, triton uses one when there is one."""
    return "cuda" if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()) else "cpu"


@pytest.mark.parametrize("backend", AVAILABLE)
@pytest.mark.parametrize("mode", ["default", "encoder_only", "ddim_eta1"])
def test_every_available_backend_gives_the_reference_actions(backend, mode):
    """DiffusionPolicy(backend=...) for the whole policy: the same injected noise gives the reference's
    actions (fp32, atol 1e-5) on every backend this machine offers (triton: the interpreter on a CPU)."""
    cfg = cfg_of(**MODES[mode])
    ref, fast = pair(cfg, backend=backend)
    dev = device_for(backend)
    ref, fast = ref.to(dev), fast.to(dev)
    assert fast.backend == backend
    obs = {k: v.to(dev) for k, v in random_obs(cfg, 2).items()}
    noise = injected(ref, 2).to(dev)
    with torch.no_grad():
        a = ref.predict_action(obs, noise=noise)["action_pred"]
        b = fast.predict_action(obs, noise=noise)["action_pred"]
    assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.parametrize("backend", AVAILABLE)
def test_load_policy_backend_reproduces_original_actions(backend, variant_ckpt):
    """load_policy(path, backend=...) on the original-format checkpoint: the original's recorded actions."""
    from tests.fixtures_path import fixtures_dir
    ex = torch.load(fixtures_dir() / "dp_variant_ckpt" / "variant_expected.pt", weights_only=True)
    dev = device_for(backend)
    policy = dp_fast.load_policy(variant_ckpt, device=dev, backend=backend)
    assert policy.backend == backend
    with torch.no_grad():
        out = policy.predict_action({k: v.to(dev) for k, v in ex["obs"].items()}, noise=ex["noise"].to(dev))["action"]
    assert (out.cpu() - ex["action"]).abs().max().item() <= 1e-4


def test_named_unavailable_backend_raises():
    missing = [n for n, info in dp_fast.available_backends().items() if not info["available"]]
    for name in missing:
        with pytest.raises(BackendUnavailable, match=name):
            DiffusionPolicy(cfg_of(), backend=name)
