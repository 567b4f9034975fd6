"""dp_fast.ops.add_noise on every backend against add_noise_ref and NoiseScheduler.add_noise."""
import math

import pytest
import torch

from dp_fast.config import SchedulerConfig
from dp_fast.ops import add_noise, add_noise_ref
from dp_fast.schedulers import NoiseScheduler
from tests.ops._helpers import FLOAT_DTYPES, B, all_backends, assert_close, fast_backends, seed_of

SHAPES = [(1, 10, 7), (7, 16, 10), (7, 10, 7), (1, 16, 10), (5, 3)]
ABAR = NoiseScheduler(SchedulerConfig()).alphas_cumprod  # (100,)


def inputs(shape, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x0, n = (torch.randn(shape, generator=gen).to(dtype) for _ in range(2))
    t = torch.randint(0, 100, (shape[0],), generator=gen)
    t[0] = 99 if shape[0] == 1 else 0  # the ends of the schedule
    if shape[0] > 1:
        t[-1] = 99
    return x0, n, t


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(backend, dtype, shape):
    x0, n, t = inputs(shape, dtype, seed_of(backend, dtype, shape))
    out = add_noise(x0, n, t, ABAR, backend=backend)
    assert out.is_contiguous()
    assert_close(out, add_noise_ref(x0, n, t, ABAR))


@pytest.mark.parametrize("backend", all_backends())
def test_is_the_scheduler_forward_process(backend):
    """fp32: the op is NoiseScheduler.add_noise (diffusers' formula), per-sample timesteps."""
    x0, n, t = inputs((7, 16, 10), torch.float32, 1)
    sched = NoiseScheduler(SchedulerConfig())
    torch.testing.assert_close(add_noise(x0, n, t, sched.alphas_cumprod, backend=backend),
                               sched.add_noise(x0, n, t), rtol=1e-6, atol=1e-6)
    # each sample uses its own timestep
    one = add_noise(x0[3:4], n[3:4], t[3:4], sched.alphas_cumprod, backend=backend)
    torch.testing.assert_close(one[0], add_noise(x0, n, t, sched.alphas_cumprod, backend=backend)[3])


def test_large_batch_multithreaded():
    """Enough work for at::parallel_for to split it (C++ CPU only: too big for the Triton interpreter)."""
    backend = "cpu"
    if not B.available_backends()[backend]["available"]:
        pytest.skip(B.available_backends()[backend]["reason"])
    x0, n, t = inputs((64, 16, 40), torch.float32, 2)
    assert_close(add_noise(x0, n, t, ABAR, backend=backend), add_noise_ref(x0, n, t, ABAR))


@pytest.mark.parametrize("backend", fast_backends())
def test_nan_and_empty(backend):
    x0, n, t = inputs((3, 4), torch.float32, 3)
    x0[1, 2] = math.nan
    out = add_noise(x0, n, t, ABAR, backend=backend)
    assert out[1, 2].isnan() and out.isnan().sum() == 1
    e = torch.empty(0, 4)
    assert add_noise(e, e, torch.empty(0, dtype=torch.int64), ABAR, backend=backend).shape == (0, 4)


def test_out_of_range_timestep():
    x0, n, t = inputs((3, 4), torch.float32, 4)
    t[1] = 100
    with pytest.raises(RuntimeError, match=r"`timesteps` must be in \[0, 100\) .* got 100 at index 1"):
        add_noise(x0, n, t, ABAR, backend="cpu")
    with pytest.raises((IndexError, RuntimeError)):
        add_noise(x0, n, t, ABAR, backend="reference")
    if B.triton_interpreter():
        out = add_noise(x0, n, t, ABAR, backend="triton")
        assert out[1].isnan().all() and not out[[0, 2]].isnan().any()


def _bad():
    x0, n, t = inputs((2, 10, 7), torch.float32, 5)
    return {
        "x0 dtype": ((x0.double(), n.double(), t, ABAR), TypeError, r"`x0` must be float32, bfloat16 or float16, got float64"),
        "x0 0-d": ((x0[0, 0, 0], n[0, 0, 0], t, ABAR), ValueError, r"`x0` must have shape \(B, ...\)"),
        "noise shape": ((x0, n[:1], t, ABAR), ValueError, r"`noise` must have the shape of `x0` \(2, 10, 7\), got \(1, 10, 7\)"),
        "noise dtype": ((x0, n.bfloat16(), t, ABAR), TypeError, r"`noise` must have the dtype of `x0` \(float32\), got bfloat16"),
        "timesteps int32": ((x0, n, t.int(), ABAR), TypeError, r"`timesteps` must be int64, got int32"),
        "timesteps shape": ((x0, n, t[:1], ABAR), ValueError, r"`timesteps` must have shape \(2,\), got \(1,\)"),
        "timesteps device": ((x0, n, t.to("meta"), ABAR), ValueError, r"`timesteps` must be on the device of `x0`"),
        "alphas_cumprod dtype": ((x0, n, t, ABAR.double()), TypeError, r"`alphas_cumprod` must be float32, got float64"),
        "alphas_cumprod 2-d": ((x0, n, t, ABAR[None]), ValueError, r"`alphas_cumprod` must have shape \(\*,\), got \(1, 100\)"),
    }


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("case", list(_bad()))
def test_bad_input_names_the_argument(backend, case):
    args, exc, pattern = _bad()[case]
    with pytest.raises(exc, match=pattern):
        add_noise(*args, backend=backend)


@pytest.mark.parametrize("backend", fast_backends())
def test_fast_backends_need_contiguous(backend):
    x0, n, t = (a.transpose(1, 2) if a.dim() == 3 else a for a in inputs((2, 10, 7), torch.float32, 6))
    with pytest.raises(ValueError, match=rf"backend '{backend}' needs `x0` contiguous"):
        add_noise(x0, n, t, ABAR, backend=backend)
    assert_close(add_noise(x0, n, t, ABAR, backend="reference"), add_noise_ref(x0.contiguous(), n.contiguous(), t, ABAR))


def test_named_backend_never_falls_back():
    x0, n, t = inputs((2, 10, 7), torch.float32, 7)
    with pytest.raises(B.BackendUnavailable, match="backend 'cuda'"):
        add_noise(x0, n, t, ABAR, backend="cuda")


def test_opcheck_cpu():
    if not B.available_backends()["cpu"]["available"]:
        pytest.skip(B.available_backends()["cpu"]["reason"])
    x0, n, t = inputs((7, 16, 10), torch.float32, 8)
    torch.library.opcheck(torch.ops.dp_fast.add_noise.default, (x0, n, t, ABAR))
