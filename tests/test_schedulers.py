"""dp_fast.schedulers against diffusers' DDPMScheduler / DDIMScheduler (the oracle), and table form vs step.

diffusers is imported only inside the tests. Its step noise is injected by patching the `randn_tensor` that
scheduling_ddpm / scheduling_ddim call, which also counts the draws so `noise_plan` is checked against them.
"""
from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch

from dp_fast.config import SchedulerConfig
from dp_fast.ops.ddpm_step import TABLE_COLUMNS, step_from_table
from dp_fast.schedulers import NoiseScheduler

SHAPE = (3, 10, 7)  # (B, T, Da)
SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

DDPM_CASES = [SchedulerConfig(kind="ddpm", beta_schedule=bs, variance_type=vt, clip_sample=clip, prediction_type=p)
              for bs, vt, clip, p in itertools.product(SCHEDULES, ("fixed_small", "fixed_small_log"), (True, False),
                                                       ("epsilon", "sample"))]
DDIM_CASES = [SchedulerConfig(kind="ddim", beta_schedule=bs, clip_sample=clip, prediction_type=p, eta=eta,
                              set_alpha_to_one=one)
              for bs, clip, p, (eta, one) in itertools.product(SCHEDULES, (True, False), ("epsilon", "sample"),
                                                              ((0.0, True), (1.0, False)))]
EXTRA_CASES = [  # (config, K): 1000 train steps, steps_offset, another clip range
    (SchedulerConfig(num_train_timesteps=1000), 1000),
    (SchedulerConfig(num_train_timesteps=1000, beta_schedule="linear", variance_type="fixed_small_log"), 10),
    (SchedulerConfig(kind="ddim", num_train_timesteps=1000, eta=1.0, clip_sample=False), 7),
    (SchedulerConfig(kind="ddim", steps_offset=1, eta=0.5, set_alpha_to_one=False), 10),
    (SchedulerConfig(kind="ddim", beta_schedule="scaled_linear", eta=0.5, clip_sample_range=0.7), 100),
    (SchedulerConfig(kind="ddim", beta_schedule="squaredcos_cap_v2", eta=0.3, prediction_type="sample"), 7),
    (SchedulerConfig(kind="ddpm", steps_offset=1, clip_sample_range=0.5), 10),
    (SchedulerConfig(kind="ddpm", clip_sample_range=2.0, prediction_type="sample"), 100),
]
CASES = [(c, k) for c in DDPM_CASES + DDIM_CASES for k in (100, 10, 7)] + EXTRA_CASES


def _id(case):
    c, k = case
    noise = c.variance_type if c.kind == "ddpm" else f"eta{c.eta}-one{int(c.set_alpha_to_one)}"
    return (f"{c.kind}-{c.beta_schedule}-{noise}-clip{c.clip_sample_range if c.clip_sample else 0}-"
            f"{c.prediction_type}-T{c.num_train_timesteps}-off{c.steps_offset}-K{k}")


def _oracle(cfg: SchedulerConfig, float64: bool = False):
    """diffusers' scheduler for cfg; float64=True casts its tables so its step runs in float64 (same semantics)."""
    from diffusers import DDIMScheduler, DDPMScheduler
    common = dict(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start, beta_end=cfg.beta_end,
                  beta_schedule=cfg.beta_schedule, clip_sample=cfg.clip_sample, clip_sample_range=cfg.clip_sample_range,
                  prediction_type=cfg.prediction_type, steps_offset=cfg.steps_offset)
    if cfg.kind == "ddpm":
        ref = DDPMScheduler(variance_type=cfg.variance_type, **common)
    else:
        ref = DDIMScheduler(set_alpha_to_one=cfg.set_alpha_to_one, **common)
    if float64:
        for name in ("betas", "alphas", "alphas_cumprod", "one", "final_alpha_cumprod"):
            if hasattr(ref, name):
                setattr(ref, name, getattr(ref, name).double())
    return ref


class _Draws:
    """Stands in for diffusers' randn_tensor: hands out the given noise tensors in order and counts them."""

    def __init__(self, noise):
        self.noise, self.count = noise, 0

    def __call__(self, shape, generator=None, device=None, dtype=None, **kw):
        out = self.noise[self.count]
        assert tuple(shape) == tuple(out.shape)
        self.count += 1
        return out.to(device=device, dtype=dtype)


def _model(x: torch.Tensor, t: int, abar: float, target: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """A fake denoiser: x0 estimate = target + an x-dependent wobble that fades as t -> 0 (like a real one)."""
    x0_hat = target + 0.1 * math.sqrt(1.0 - abar) * torch.sin(3.0 * x + 0.1 * t)
    if prediction_type == "sample":
        return x0_hat
    return (x - math.sqrt(abar) * x0_hat) / math.sqrt(1.0 - abar)


def _one_train_step_correction(s: NoiseScheduler, t: int, prev: int, x0, x, z):
    """What the stored betas[t] / alphas[t] (diffusers 0.11.1, the original's version) change against current diffusers' effective
    beta 1 - abar_t / abar_prev on a DDPM step t -> t - 1 (see NoiseScheduler's docstring); 0 for other steps."""
    if s.config.kind != "ddpm" or prev != t - 1:
        return 0.0
    a_t, a_p = s._abar[t], (s._abar[prev] if prev >= 0 else 1.0)
    beta, alpha = float(s.betas[t]), float(s.alphas[t])
    beta_mod = 1.0 - a_t / a_p
    de = math.sqrt(a_p) * (beta - beta_mod) / (1.0 - a_t)
    df = (math.sqrt(alpha) - math.sqrt(1.0 - beta_mod)) * (1.0 - a_p) / (1.0 - a_t)
    out = de * x0 + df * x
    if t > 0:
        def sd(b):
            return math.sqrt(max((1.0 - a_p) / (1.0 - a_t) * b, 1e-20))
        out = out + (sd(beta) - sd(beta_mod)) * z
    return out


# ---------------------------------------------------------------------------------------------- tables
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("n_train", (100, 1000, 7))
def test_tables_bit_identical(schedule, n_train):
    cfg = SchedulerConfig(beta_schedule=schedule, num_train_timesteps=n_train)
    ours, ref = NoiseScheduler(cfg), _oracle(cfg)
    for name in ("betas", "alphas", "alphas_cumprod"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.dtype == torch.float32 and torch.equal(a, b), name


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_timesteps_and_add_noise_match_diffusers(case):
    cfg, k = case
    ours, ref = NoiseScheduler(cfg), _oracle(cfg)
    ref.set_timesteps(k)
    ts = ours.timesteps(k)
    assert ts.dtype == torch.int64 and torch.equal(ts, ref.timesteps)
    g = torch.Generator().manual_seed(k)
    x0, noise = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    t = torch.randint(0, cfg.num_train_timesteps, (SHAPE[0],), generator=g)
    assert torch.equal(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t))


# ---------------------------------------------------------------------------------------------- whole loop
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_denoising_loop_matches_diffusers(case, monkeypatch):
    """A K-step loop with the same injected noise and the same (float32) fake model: ours vs diffusers.

    diffusers runs in float64 (its tables cast; same code, same semantics): in float32 its 1 - abar_t/abar_prev
    cancels badly at small t, which is rounding, not semantics. One-train-step DDPM moves get the documented
    betas[t] correction. Each iteration checks one step fed diffusers' own x_t (atol 1e-5), and our free-running
    trajectories (step and table form), where float32 rounding accumulates: atol 1e-5 + rtol 1e-5.
    """
    import diffusers.schedulers.scheduling_ddim as ddim_mod
    import diffusers.schedulers.scheduling_ddpm as ddpm_mod

    cfg, k = case
    ours, ref = NoiseScheduler(cfg), _oracle(cfg, float64=True)
    plan = ours.noise_plan(k)
    draws = [j >= 0 for j in plan]
    g = torch.Generator().manual_seed(1000 + k)
    noise = torch.randn((ours.num_noise(k),) + SHAPE, generator=g)
    target = (0.8 * torch.randn(SHAPE, generator=g)).clamp(-1.2, 1.2)
    fake = _Draws(noise[1:])
    monkeypatch.setattr(ddpm_mod if cfg.kind == "ddpm" else ddim_mod, "randn_tensor", fake)
    ref.set_timesteps(k)
    table = ours.step_table(k)
    eta = {} if cfg.kind == "ddpm" else {"eta": cfg.eta}
    ts = ours.timesteps(k).tolist()

    def model(x, t):
        return _model(x, t, ours._abar[t], target, cfg.prediction_type)

    def excess(got, want, rtol=0.0):  # > 0 where got is outside atol 1e-5 + rtol |want|
        return ((got.double() - want).abs() - 1e-5 - rtol * want.abs()).max().item()

    x_ref, x_step, x_tab = noise[0].double(), noise[0], noise[0]
    n, worst = 1, {}
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < k else -1
        step_noise = noise[plan[i]] if draws[i] else None
        assert plan[i] in (-1, n)  # the n-th drawing iteration uses noise[n]
        z = step_noise.double() if draws[i] else None
        x_in = x_ref.float()
        m = model(x_in, t)
        out = ref.step(m.double(), ref.timesteps[i], x_ref, **eta)
        x_ref = out.prev_sample + _one_train_step_correction(ours, t, prev, out.pred_original_sample, x_ref, z)
        x_step = ours.step(model(x_step, t), t, x_step, step_noise, k)
        x_tab = step_from_table(table, torch.tensor(i), x_tab, model(x_tab, t), step_noise)
        n += draws[i]
        for name, err in (("step on diffusers' x_t", excess(ours.step(m, t, x_in, step_noise, k), x_ref)),
                          ("table on diffusers' x_t", excess(step_from_table(table, i, x_in, m, step_noise), x_ref)),
                          ("free-running step", excess(x_step, x_ref, 1e-5)),
                          ("free-running table", excess(x_tab, x_ref, 1e-5))):
            if err > 0 and name not in worst:
                worst[name] = (i, t, err)
    assert not worst, f"exceeds tolerance by (iteration, t, excess): {worst}"
    assert fake.count == n - 1 == sum(draws), "noise_plan disagrees with the draws diffusers made"
    assert x_ref.abs().max() > 0.1  # the loop did not collapse to something trivially equal


def test_one_train_step_betas_reproduce_original_fixture():
    """The original code (diffusers 0.11.1) recorded every step of the seed configuration's 100-step loop."""
    from tests.fixtures_path import fixtures_dir
    fx = torch.load(fixtures_dir() / "dp_reference" / "fixture.pt", weights_only=True)
    p = fx["predict"]
    s = NoiseScheduler(SchedulerConfig())
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert torch.equal(getattr(s, name), fx["scheduler"][name]), name
    assert torch.equal(s.timesteps(100), p["timesteps"])
    table = s.step_table(100)
    x_step = x_tab = p["noise"][0]
    for i, t in enumerate(p["timesteps"].tolist()):
        z = p["noise"][i + 1] if t > 0 else None
        x_in, m = p["model_input"][i], p["model_output"][i]
        # teacher-forced (recorded x_t, recorded eps): one step
        torch.testing.assert_close(s.step(m, t, x_in, z, 100), p["prev_sample"][i], atol=1e-6, rtol=0)
        torch.testing.assert_close(step_from_table(table, i, x_in, m, z), p["prev_sample"][i], atol=1e-6, rtol=0)
        # free-running with the recorded eps: the whole chain
        x_step, x_tab = s.step(m, t, x_step, z, 100), step_from_table(table, i, x_tab, m, z)
    torch.testing.assert_close(x_step, p["prev_sample"][-1], atol=1e-5, rtol=0)
    torch.testing.assert_close(x_tab, p["prev_sample"][-1], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------- table vs step
@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_step_from_table_equals_step(case):
    cfg, k = case
    ours = NoiseScheduler(cfg)
    table = ours.step_table(k)
    assert table.shape == (k, len(TABLE_COLUMNS)) and table.dtype == torch.float32
    cols = dict(zip(TABLE_COLUMNS, table.T))
    assert torch.all(cols["g"] == 0) if cfg.kind == "ddpm" else torch.all(cols["f"] == 0)
    draws = torch.tensor([j >= 0 for j in ours.noise_plan(k)])
    assert torch.all(cols["sigma"][~draws] == 0)
    g = torch.Generator().manual_seed(7 * k)
    for i, t in enumerate(ours.timesteps(k).tolist()):
        x, m, z = (torch.randn(SHAPE, generator=g) for _ in range(3))
        want = ours.step(m, t, x, z, k)
        got = step_from_table(table, i, x, m, z)
        # atol 1e-6, scaled where unclipped x0 = (x - sqrt(1-abar) m) / sqrt(abar) is huge (tiny abar_t)
        tol = 1e-6 * (1.0 + want.abs().max().item())
        assert (got - want).abs().max().item() <= tol, f"iteration {i} (t={t})"
        if i in (0, k // 2, k - 1):
            for idx in (torch.tensor(i), torch.tensor([i])):
                assert torch.equal(step_from_table(table, idx, x, m, z), got)
        if not draws[i]:
            assert torch.equal(step_from_table(table, i, x, m, None), got)


def test_step_accepts_tensor_timesteps():
    s = NoiseScheduler(SchedulerConfig())
    x, m, z = torch.randn(3, *SHAPE)
    want = s.step(m, 42, x, z, 100)
    assert torch.equal(s.step(m, torch.tensor(42), x, z, 100), want)
    assert torch.equal(s.step(m, torch.tensor([42]), x, z, 100), want)
    assert not torch.equal(s.step(m, 41, x, z, 100), want)


def test_noise_plan_layout():
    ddpm = NoiseScheduler(SchedulerConfig())
    assert ddpm.noise_plan(100) == tuple(range(1, 100)) + (-1,) and ddpm.num_noise(100) == 100
    assert NoiseScheduler(SchedulerConfig(kind="ddim")).noise_plan(3) == (-1, -1, -1)
    assert NoiseScheduler(SchedulerConfig(kind="ddim", eta=0.5)).noise_plan(3) == (1, 2, 3)
    assert NoiseScheduler(SchedulerConfig(kind="ddim")).num_noise(10) == 1
    assert NoiseScheduler(SchedulerConfig(kind="ddim", eta=0.5)).num_noise(10) == 11
    # current diffusers adds steps_offset to DDPM timesteps too: the last step is then t = 1 > 0 and draws
    offset = NoiseScheduler(SchedulerConfig(steps_offset=1))
    assert offset.timesteps(10)[-1].item() == 1 and offset.noise_plan(10) == tuple(range(1, 11))


def test_seed_table_matches_reference_md_formula():
    """The DDPM step of docs/numerics.md (K = T = 100) written out independently, for the seed configuration."""
    s = NoiseScheduler(SchedulerConfig())
    abar = s.alphas_cumprod.double()
    betas = s.betas.double()
    table = s.step_table(100).double()
    for i in (0, 50, 98, 99):
        t = 99 - i
        ap = abar[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
        e = ap.sqrt() * betas[t] / (1 - abar[t])
        f = (1 - betas[t]).sqrt() * (1 - ap) / (1 - abar[t])
        sigma = ((1 - ap) / (1 - abar[t]) * betas[t]).clamp(min=1e-20).sqrt() if t > 0 else 0.0
        want = torch.tensor([1 / abar[t].sqrt(), -(1 - abar[t]).sqrt() / abar[t].sqrt(), 0, 0, e, f, 0, sigma, -1, 1],
                            dtype=torch.float64)
        torch.testing.assert_close(table[i], want, rtol=1e-6, atol=0)


def test_to_moves_tables():
    s = NoiseScheduler(SchedulerConfig())
    s.step_table(10)
    assert s.to("meta") is s
    assert {s.betas.device.type, s.alphas_cumprod.device.type, s.step_table(10).device.type,
            s.step_table(7).device.type, s.timesteps(7).device.type} == {"meta"}


@pytest.mark.gpu
def test_no_host_sync_on_cuda():
    s = NoiseScheduler(SchedulerConfig(), device="cuda")
    table = s.step_table(100)
    x, m, z = torch.randn(3, *SHAPE, device="cuda")
    i, t = torch.tensor(5, device="cuda"), torch.randint(0, 100, (SHAPE[0],), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = step_from_table(table, i, x, m, z)
        noisy = s.add_noise(x, z, t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(out, step_from_table(table, 5, x, m, z), atol=0, rtol=0)
    torch.testing.assert_close(noisy.cpu(), NoiseScheduler(SchedulerConfig()).add_noise(x.cpu(), z.cpu(), t.cpu()))


# ---------------------------------------------------------------------------------------------- errors
def _raises(exc, match, fn, *args, **kw):
    with pytest.raises(exc, match=match):
        fn(*args, **kw)


def test_error_messages():
    s = NoiseScheduler(SchedulerConfig())
    x = torch.zeros(SHAPE)
    _raises(ValueError, r"num_inference_steps must be in \[1, num_train_timesteps=100\], got 0", s.timesteps, 0)
    _raises(ValueError, r"got 101", s.step_table, 101)
    _raises(TypeError, r"num_inference_steps must be an int in \[1, 100\], got 10.0", s.timesteps, 10.0)
    _raises(TypeError, r"num_inference_steps must be an int", s.step_table, [10])
    _raises(ValueError, r"steps_offset=1 .* first timestep 100", NoiseScheduler(
        SchedulerConfig(steps_offset=1)).timesteps, 100)
    _raises(ValueError, r"model_output must have the shape of sample \(3, 10, 7\), got \(3, 10, 6\)",
            s.step, torch.zeros(3, 10, 6), 5, x, x)
    _raises(ValueError, r"noise of shape \(3, 10, 7\) is needed at timestep 5", s.step, x, 5, x, None)
    _raises(ValueError, r"noise must have the shape of sample \(3, 10, 7\), got \(3, 10\)",
            s.step, x, 5, x, torch.zeros(3, 10))
    _raises(ValueError, r"timestep must be in \[0, 99\], got 100", s.step, x, 100, x, x)
    _raises(ValueError, r"timestep must be in \[0, 99\], got -1", s.step, x, torch.tensor(-1), x, x)
    _raises(ValueError, r"timestep 5 is not one of the 10 DDPM timesteps", s.step, x, 5, x, x, 10)
    _raises(TypeError, r"integer with one element", s.step, x, torch.tensor([1, 2]), x, x)
    _raises(TypeError, r"python int or an integer tensor", s.step, x, 5.0, x, x)
    _raises(ValueError, r"noise must have the shape of sample \(3, 10, 7\), got \(3, 7\)",
            s.add_noise, x, torch.zeros(3, 7), torch.zeros(3, dtype=torch.int64))
    _raises(ValueError, r"t must have shape \(B,\) = \(3,\) to match x0 \(3, 10, 7\), got \(4,\)",
            s.add_noise, x, x, torch.zeros(4, dtype=torch.int64))
    _raises(TypeError, r"t must be an integer tensor of shape \(3,\), got torch.float32",
            s.add_noise, x, x, torch.zeros(3))
    table = s.step_table(10)
    _raises(ValueError, r"table must have shape \(K, 10\), got \(10, 9\)", step_from_table, table[:, :9], 0, x, x, x)
    _raises(IndexError, r"i must be in \[0, 9\] .* got 10", step_from_table, table, 10, x, x, x)
    _raises(TypeError, r"integer tensor with one element", step_from_table, table, torch.tensor(1.0), x, x, x)
    _raises(ValueError, r"model_output must have the shape of sample", step_from_table, table, 0, x, x[0], x)
    _raises(ValueError, r"eta must be >= 0", NoiseScheduler, SchedulerConfig(kind="ddim", eta=-0.1))
    _raises(ValueError, r"betas must lie in \(0, 1\)", NoiseScheduler,
            SchedulerConfig(beta_schedule="linear", beta_start=0.0))
    _raises(ValueError, r"eta=2.0 is too large", NoiseScheduler(SchedulerConfig(kind="ddim", eta=2.0)).step_table, 10)
    _raises(TypeError, r"SchedulerConfig", NoiseScheduler, dataclasses.asdict(SchedulerConfig()))
