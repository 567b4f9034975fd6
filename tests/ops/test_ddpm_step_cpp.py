"""dp_fast::ddpm_step from the C++/CUDA extension against the formula, evaluated here in PyTorch.

table row i = [a, b, c, d, e, f, g, sigma, lo, hi]; x = sample, m = model_output, n = noise:
    x0 = clamp(a*x + b*m, lo, hi);  eps = c*x + d*m;  out = e*x0 + f*x + g*eps + sigma*n
"""
import math
import zlib

import pytest
import torch

from dp_fast import _ext
from dp_fast.ops.ddpm_step import step_from_table

pytestmark = pytest.mark.skipif(not _ext.available(), reason=_ext.unavailable_reason())

K = 6
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(1, 10, 7), (7, 16, 10), (3, 5)]
# Relative tolerance of one rounding to the output dtype (the op computes in fp32, rounds once).
RTOL = {torch.float32: 1e-6, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
ATOL = {torch.float32: 1e-6, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def ddpm_step(*args):
    return torch.ops.dp_fast.ddpm_step(*args)


def make_table(gen, k=K):
    """Random rows with clamping that bites; row 0 unclamped (lo/hi = -/+inf), last row sigma = 0."""
    t = torch.randn(k, 10, generator=gen)
    t[:, 7] = torch.rand(k, generator=gen)          # sigma >= 0
    t[:, 8] = -0.25 - torch.rand(k, generator=gen)  # lo in (-1.25, -0.25]
    t[:, 9] = 0.25 + torch.rand(k, generator=gen)   # hi in [0.25, 1.25)
    t[0, 8], t[0, 9] = -math.inf, math.inf
    t[-1, 7] = 0.0
    return t


def seed_of(*key):
    """A per-test seed that does not depend on PYTHONHASHSEED."""
    return zlib.crc32(repr(key).encode())


def make_inputs(shape, dtype, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed)
    x, m, n = (torch.randn(shape, generator=gen).to(device=device, dtype=dtype) for _ in range(3))
    return x, m, n, make_table(gen).to(device)


def formula(x, m, n, table, i):
    """The step in fp32 from the given (possibly half) inputs, rounded once to their dtype."""
    a, b, c, d, e, f, g, sigma, lo, hi = table[i].tolist()
    xf, mf, nf = x.float(), m.float(), n.float()
    x0 = (a * xf + b * mf).clamp(lo, hi)
    eps = c * xf + d * mf
    return (e * x0 + f * xf + g * eps + sigma * nf).to(x.dtype)


def assert_matches(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.is_contiguous()
    torch.testing.assert_close(out.float(), ref.float(), rtol=RTOL[ref.dtype], atol=ATOL[ref.dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("i", [0, 2, K - 1])
def test_cpu_matches_formula(dtype, shape, i):
    x, m, n, table = make_inputs(shape, dtype, seed=seed_of(dtype, shape, i))
    out = ddpm_step(x, m, n, table, torch.tensor(i))
    assert_matches(out, formula(x, m, n, table, i))


def test_cpu_rows_exercise_clamp_and_sigma():
    """The table rows above do what their comments claim: clamping changes values, sigma=0 drops n."""
    x, m, n, table = make_inputs((7, 16, 10), torch.float32)
    raw = table[2, 0] * x + table[2, 1] * m
    assert ((raw < table[2, 8]) | (raw > table[2, 9])).any()
    out0 = ddpm_step(x, m, n, table, torch.tensor(K - 1))
    out1 = ddpm_step(x, m, torch.randn_like(n) * 100, table, torch.tensor(K - 1))
    torch.testing.assert_close(out0, out1, rtol=0, atol=0)


def test_cpu_large_input_multithreaded():
    """Enough elements for at::parallel_for to split the work across threads."""
    x, m, n, table = make_inputs((5, 40_000), torch.float32, seed=7)
    out = ddpm_step(x, m, n, table, torch.tensor(3))
    assert_matches(out, formula(x, m, n, table, 3))


def test_cpu_nan_propagates_and_empty_input():
    x, m, n, table = make_inputs((2, 3), torch.float32)
    x[0, 0] = math.nan
    out = ddpm_step(x, m, n, table, torch.tensor(2))
    assert out[0, 0].isnan() and not out.view(-1)[1:].isnan().any()
    empty = torch.empty(0, 10)
    assert ddpm_step(empty, empty, empty, table, torch.tensor(0)).shape == (0, 10)


def test_output_is_new_tensor():
    x, m, n, table = make_inputs((3, 5), torch.float32)
    x_before = x.clone()
    out = ddpm_step(x, m, n, table, torch.tensor(1))
    assert out.data_ptr() not in (x.data_ptr(), m.data_ptr(), n.data_ptr())
    assert torch.equal(x, x_before)


def _bad_args():
    x, m, n, table = make_inputs((2, 10, 7), torch.float32)
    s = torch.tensor(1)
    wide = torch.randn(K, 12)
    return {
        "model_output shape": ((x, m[:, :, :6].contiguous(), n, table, s), r"`model_output` must have the shape of `sample` \[2, 10, 7\], got \[2, 10, 6\]"),
        "noise shape": ((x, m, n[:1], table, s), r"`noise` must have the shape of `sample`"),
        "noise dtype": ((x, m, n.half(), table, s), r"`noise` must have the dtype of `sample` \(float32\), got float16"),
        "sample float64": ((x.double(), m.double(), n.double(), table, s), r"`sample` must be float32, bfloat16 or float16, got float64"),
        "table shape": ((x, m, n, table[:, :9].contiguous(), s), r"`table` must have shape \(K, 10\) with K >= 1, got \[6, 9\]"),
        "table 1-d": ((x, m, n, table[0], s), r"`table` must have shape \(K, 10\)"),
        "table dtype": ((x, m, n, table.double(), s), r"`table` must be float32, got float64"),
        "table non-contiguous": ((x, m, n, wide[:, :10], s), r"`table` must be contiguous"),
        "step too large": ((x, m, n, table, torch.tensor(K)), r"`step` must be in \[0, 6\) \(the rows of `table`\), got 6"),
        "step negative": ((x, m, n, table, torch.tensor(-1)), r"`step` must be in \[0, 6\)"),
        "step int32": ((x, m, n, table, torch.tensor(1, dtype=torch.int32)), r"`step` must be int64, got int32"),
        "step 1-d": ((x, m, n, table, torch.tensor([1])), r"`step` must be a 0-d tensor, got shape \[1\]"),
        "sample non-contiguous": ((x.transpose(1, 2), m.transpose(1, 2), n.transpose(1, 2), table, s), r"`sample` must be contiguous"),
        "noise non-contiguous": ((x, m, n.transpose(1, 2).contiguous().transpose(1, 2), table, s), r"`noise` must be contiguous"),
    }


@pytest.mark.parametrize("case", list(_bad_args()))
def test_cpu_errors_name_the_argument(case):
    args, pattern = _bad_args()[case]
    with pytest.raises(RuntimeError, match=pattern):
        ddpm_step(*args)


def test_opcheck_cpu():
    x, m, n, table = make_inputs((7, 16, 10), torch.float32)
    torch.library.opcheck(torch.ops.dp_fast.ddpm_step.default, (x, m, n, table, torch.tensor(2)))


def _scheduler_tables():
    """Tables the library really builds: {name: (K, 10) float32} for DDPM and DDIM variants."""
    schedulers = pytest.importorskip("dp_fast.schedulers")
    from dp_fast.config import SchedulerConfig

    configs = {
        "ddpm-100": (SchedulerConfig(), 100),
        "ddpm-sample-16": (SchedulerConfig(prediction_type="sample", num_train_timesteps=16), 16),
        "ddim-eta0.5-10": (SchedulerConfig(kind="ddim", eta=0.5), 10),
    }
    return {name: schedulers.NoiseScheduler(cfg).step_table(k) for name, (cfg, k) in configs.items()}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_matches_schedulers_step_from_table(dtype):
    """The op and the library's pure-PyTorch reference compute the same step, on random tables and
    on the DDPM / DDIM tables the schedulers build."""
    x, m, n, random_table = make_inputs((7, 16, 10), dtype, seed=3)
    tables = {"random": random_table, **_scheduler_tables()}
    for name, table in tables.items():
        k = table.shape[0]
        for i in sorted({0, 1, k // 2, k - 1}):
            step = torch.tensor(i)
            ref = step_from_table(table, step, x, m, n)
            assert ref.dtype == dtype, name
            assert_matches(ddpm_step(x, m, n, table, step), ref)


# ---------------------------------------------------------------------------------------------
# CUDA

def _require_cuda_kernels():
    if not _ext.has_cuda_kernels():
        pytest.skip(f"dp_fast._C was built without CUDA kernels ({_ext.build_info()})")


# FMA contraction on the GPU changes the last bit of intermediate terms, which cancellation can
# expose: fp32 is compared at the project's elementwise 1e-5.
CUDA_TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2.0**-7, 1e-5), torch.float16: (2.0**-10, 1e-5)}


def assert_matches_cuda(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.device == ref.device
    rtol, atol = CUDA_TOL[ref.dtype]
    torch.testing.assert_close(out.float(), ref.float(), rtol=rtol, atol=atol)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES + [(64, 16, 10), (1000, 1001)], ids=str)
@pytest.mark.parametrize("i", [0, 2, K - 1])
def test_cuda_matches_formula(dtype, shape, i):
    _require_cuda_kernels()
    x, m, n, table = make_inputs(shape, dtype, device="cuda", seed=seed_of(dtype, shape, i))
    out = ddpm_step(x, m, n, table, torch.tensor(i, device="cuda"))
    assert_matches_cuda(out, formula(x, m, n, table, i))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_unaligned_inputs(dtype):
    """Inputs that start 1 element past a 16-byte boundary take the scalar (non-vector) path."""
    _require_cuda_kernels()
    shape = (7, 16, 10)
    gen = torch.Generator().manual_seed(11)
    x, m, n = (torch.randn(1 + 7 * 16 * 10, generator=gen).to("cuda", dtype)[1:].view(shape) for _ in range(3))
    assert x.data_ptr() % 16 != 0
    table = make_table(gen).cuda()
    out = ddpm_step(x, m, n, table, torch.tensor(2, device="cuda"))
    assert_matches_cuda(out, formula(x, m, n, table, 2))


@pytest.mark.gpu
def test_cuda_step_out_of_range_gives_nan():
    """No host sync means no exception: a bad step poisons the output instead."""
    _require_cuda_kernels()
    x, m, n, table = make_inputs((3, 5), torch.float32, device="cuda")
    for bad in (K, -1):
        out = ddpm_step(x, m, n, table, torch.tensor(bad, device="cuda"))
        assert out.isnan().all()


@pytest.mark.gpu
def test_cuda_errors_name_the_argument():
    _require_cuda_kernels()
    x, m, n, table = make_inputs((2, 10, 7), torch.float32, device="cuda")
    with pytest.raises(RuntimeError, match=r"`step` must be on the device of `sample`"):
        ddpm_step(x, m, n, table, torch.tensor(1))
    with pytest.raises(RuntimeError, match=r"`table` must be on the device of `sample`"):
        ddpm_step(x, m, n, table.cpu(), torch.tensor(1, device="cuda"))
    with pytest.raises(RuntimeError, match=r"`model_output` must have the shape of `sample`"):
        ddpm_step(x, m[:1], n, table, torch.tensor(1, device="cuda"))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_graph_replay_reads_step_on_device(dtype):
    """Captured once, replayed with `step` and `sample` updated in place: each replay is correct."""
    _require_cuda_kernels()
    x, m, n, table = make_inputs((7, 16, 10), dtype, device="cuda", seed=5)
    step = torch.zeros((), dtype=torch.int64, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        ddpm_step(x, m, n, table, step)  # warm-up outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ddpm_step(x, m, n, table, step)
    gen = torch.Generator().manual_seed(6)
    for i in (K - 1, 0, 3):
        step.fill_(i)
        x.copy_(torch.randn(x.shape, generator=gen).to("cuda", dtype))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches_cuda(out, formula(x, m, n, table, i))


@pytest.mark.gpu
def test_opcheck_cuda():
    _require_cuda_kernels()
    x, m, n, table = make_inputs((7, 16, 10), torch.float32, device="cuda")
    torch.library.opcheck(torch.ops.dp_fast.ddpm_step.default, (x, m, n, table, torch.tensor(2, device="cuda")))


@pytest.mark.gpu
def test_cuda_matches_schedulers_step_from_table():
    _require_cuda_kernels()
    x, m, n, random_table = make_inputs((7, 16, 10), torch.float32, device="cuda", seed=3)
    tables = {"random": random_table, **{k: t.cuda() for k, t in _scheduler_tables().items()}}
    for name, table in tables.items():
        k = table.shape[0]
        for i in sorted({0, 1, k // 2, k - 1}):
            step = torch.tensor(i, device="cuda")
            assert_matches_cuda(ddpm_step(x, m, n, table, step), step_from_table(table, step, x, m, n))
