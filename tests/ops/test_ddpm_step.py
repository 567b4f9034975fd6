"""dp_fast.ops.ddpm_step on every backend against ddpm_step_ref and the scheduler's clear step."""
import math

import pytest
import torch

from dp_fast.config import SchedulerConfig
from dp_fast.ops import ddpm_step, ddpm_step_ref
from dp_fast.schedulers import NoiseScheduler
from tests.ops._helpers import FLOAT_DTYPES, B, all_backends, assert_close, fast_backends, seed_of

# (B, T, Da): batch 1 and 7, horizon 10 and 16, action dim 7 and 10
SHAPES = [(1, 10, 7), (7, 16, 10), (7, 10, 7), (1, 16, 10)]
SCHEDULES = {
    "ddpm-100": (SchedulerConfig(), 100),
    "ddpm-16-of-100": (SchedulerConfig(), 16),
    "ddim-eta0-10": (SchedulerConfig(kind="ddim"), 10),
    "ddim-eta0.5-10": (SchedulerConfig(kind="ddim", eta=0.5), 10),
    "ddpm-sample-pred": (SchedulerConfig(prediction_type="sample", num_train_timesteps=16), 16),
}


def inputs(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("schedule", ["ddpm-100", "ddim-eta0.5-10"])
def test_matches_reference(backend, dtype, shape, schedule):
    cfg, k = SCHEDULES[schedule]
    table = NoiseScheduler(cfg).step_table(k)
    x, m, n = inputs(shape, dtype, seed_of(backend, dtype, shape, schedule))
    for i in (0, k // 2, k - 1):
        step = torch.tensor(i)
        out = ddpm_step(x, m, n, table, step, backend=backend)
        assert out.is_contiguous() and out.data_ptr() != x.data_ptr()
        assert_close(out, ddpm_step_ref(x, m, n, table, step))


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_table_step_is_the_scheduler_step(backend, schedule):
    """Row i of the table is iteration i of the DDPM / DDIM loop: the op equals NoiseScheduler.step (fp32)."""
    cfg, k = SCHEDULES[schedule]
    sched = NoiseScheduler(cfg)
    table = sched.step_table(k)
    ts = sched.timesteps(k).tolist()
    x, m, n = inputs((7, 10, 7), torch.float32, seed_of(schedule))
    x0_clip = torch.ones(()).new_tensor(cfg.clip_sample_range)
    m = m if cfg.prediction_type == "epsilon" else m.clamp(-x0_clip, x0_clip) * 0.5
    for i in sorted({0, 1, k // 2, k - 2, k - 1}):
        want = sched.step(m, ts[i], x, noise=n, num_inference_steps=k)
        got = ddpm_step(x, m, n, table, torch.tensor(i), backend=backend)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", fast_backends())
def test_sigma_zero_ignores_noise_and_clamp_applies(backend):
    table = NoiseScheduler(SchedulerConfig()).step_table(100)
    x, m, n = inputs((7, 16, 10), torch.float32, 1)
    x = x * 5  # x0 = (x - sqrt(1-abar) m) / sqrt(abar) leaves [-1, 1]: the clamp bites
    last = torch.tensor(99)  # t = 0: no noise
    a = ddpm_step(x, m, n, table, last, backend=backend)
    b = ddpm_step(x, m, n * 1000, table, last, backend=backend)
    assert torch.equal(a, b)
    raw = table[50, 0] * x + table[50, 1] * m
    assert ((raw < -1) | (raw > 1)).any()
    assert_close(ddpm_step(x, m, n, table, torch.tensor(50), backend=backend),
                 ddpm_step_ref(x, m, n, table, torch.tensor(50)))


@pytest.mark.parametrize("backend", fast_backends())
def test_nan_propagates_and_empty(backend):
    table = NoiseScheduler(SchedulerConfig()).step_table(100)
    x, m, n = inputs((2, 10, 7), torch.float32, 2)
    x[0, 0, 0] = math.nan
    out = ddpm_step(x, m, n, table, torch.tensor(3), backend=backend)
    assert out[0, 0, 0].isnan() and not out.reshape(-1)[1:].isnan().any()
    e = torch.empty(0, 10, 7)
    assert ddpm_step(e, e, e, table, torch.tensor(0), backend=backend).shape == (0, 10, 7)


def test_out_of_range_step():
    """CPU kernels check the step (it is on the host); Triton cannot without a sync and gives NaN."""
    table = NoiseScheduler(SchedulerConfig()).step_table(10)
    x, m, n = inputs((1, 10, 7), torch.float32, 3)
    with pytest.raises(RuntimeError, match=r"`step` must be in \[0, 10\)"):
        ddpm_step(x, m, n, table, torch.tensor(10), backend="cpu")
    with pytest.raises((IndexError, RuntimeError)):
        ddpm_step(x, m, n, table, torch.tensor(10), backend="reference")
    if B.triton_interpreter():
        assert ddpm_step(x, m, n, table, torch.tensor(-1), backend="triton").isnan().all()


def _bad():
    x, m, n = inputs((2, 10, 7), torch.float32, 4)
    table = NoiseScheduler(SchedulerConfig()).step_table(10)
    s = torch.tensor(1)
    return {
        "sample dtype": ((x.double(), m.double(), n.double(), table, s), TypeError,
                         r"`sample` must be float32, bfloat16 or float16, got float64"),
        "sample not a tensor": ((x.tolist(), m, n, table, s), TypeError, r"`sample` must be a tensor, got list"),
        "model_output shape": ((x, m[:, :, :6], n, table, s), ValueError,
                               r"`model_output` must have the shape of `sample` \(2, 10, 7\), got \(2, 10, 6\)"),
        "noise dtype": ((x, m, n.half(), table, s), TypeError,
                        r"`noise` must have the dtype of `sample` \(float32\), got float16"),
        "noise device": ((x, m, n.to("meta"), table, s), ValueError, r"`noise` must be on the device of `sample`"),
        "table shape": ((x, m, n, table[:, :9], s), ValueError, r"`table` must have shape \(\*, 10\), got \(10, 9\)"),
        "table dtype": ((x, m, n, table.double(), s), TypeError, r"`table` must be float32, got float64"),
        "table device": ((x, m, n, table.to("meta"), s), ValueError, r"`table` must be on the device of `sample`"),
        "step int": ((x, m, n, table, 1), TypeError, r"`step` must be a tensor, got int"),
        "step int32": ((x, m, n, table, s.int()), TypeError, r"`step` must be int64, got int32"),
        "step 1-d": ((x, m, n, table, s.reshape(1)), ValueError, r"`step` must have shape \(\), got \(1,\)"),
    }


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("case", list(_bad()))
def test_bad_input_names_the_argument(backend, case):
    args, exc, pattern = _bad()[case]
    with pytest.raises(exc, match=pattern):
        ddpm_step(*args, backend=backend)


@pytest.mark.parametrize("backend", fast_backends())
def test_fast_backends_need_contiguous(backend):
    table = NoiseScheduler(SchedulerConfig()).step_table(10)
    x, m, n = (t.transpose(1, 2) for t in inputs((2, 10, 7), torch.float32, 5))
    with pytest.raises(ValueError, match=rf"backend '{backend}' needs `sample` contiguous"):
        ddpm_step(x, m, n, table, torch.tensor(1), backend=backend)
    # the reference takes any layout
    out = ddpm_step(x, m, n, table, torch.tensor(1), backend="reference")
    assert_close(out, ddpm_step_ref(x.contiguous(), m.contiguous(), n.contiguous(), table, torch.tensor(1)))


def test_named_backend_never_falls_back():
    table = NoiseScheduler(SchedulerConfig()).step_table(10)
    x, m, n = inputs((2, 10, 7), torch.float32, 6)
    with pytest.raises(B.BackendUnavailable, match="backend 'cuda'"):
        ddpm_step(x, m, n, table, torch.tensor(1), backend="cuda")
    with pytest.raises(ValueError, match="backend must be one of"):
        ddpm_step(x, m, n, table, torch.tensor(1), backend="fast")


def test_env_var_selects_backend(monkeypatch):
    table = NoiseScheduler(SchedulerConfig()).step_table(10)
    x, m, n = inputs((2, 10, 7), torch.float32, 7)
    monkeypatch.setenv("DP_FAST_BACKEND", "cuda")
    with pytest.raises(B.BackendUnavailable):
        ddpm_step(x, m, n, table, torch.tensor(1))
    monkeypatch.setenv("DP_FAST_BACKEND", "reference")
    assert_close(ddpm_step(x, m, n, table, torch.tensor(1)), ddpm_step_ref(x, m, n, table, torch.tensor(1)))


def test_torch_compile_sees_an_ordinary_op():
    """The dispatcher and the C++ op trace into one graph (fake impl registered, no graph break)."""
    if not B.available_backends()["cpu"]["available"]:
        pytest.skip(B.available_backends()["cpu"]["reason"])
    table = NoiseScheduler(SchedulerConfig()).step_table(10)
    x, m, n = inputs((2, 10, 7), torch.float32, 8)
    fn = torch.compile(lambda *a: ddpm_step(*a, backend="cpu"), backend="eager", fullgraph=True)
    torch.testing.assert_close(fn(x, m, n, table, torch.tensor(4)), ddpm_step_ref(x, m, n, table, torch.tensor(4)))
