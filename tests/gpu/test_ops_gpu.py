"""GPU checks of dp_fast.ops: CUDA and Triton kernels on the device vs the reference, CUDA-graph capture
and replay of each op, torch.library.opcheck, torch.compile, and a compute-sanitizer run.

All marked `gpu` (skipped without a CUDA device by tests/conftest.py); run by benchmarks/gpu_first.sh, which
runs the compute-sanitizer test on its own, last, with DP_FAST_SANITIZER_TIMEOUT set to the time it has left.
"""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from dp_fast import _ext
from dp_fast.config import SchedulerConfig
from dp_fast.ops import (add_noise, add_noise_ref, center_crop, ddpm_step, ddpm_step_ref, random_crop,
                         random_crop_offsets, random_crop_ref)
from dp_fast.schedulers import NoiseScheduler

pytestmark = pytest.mark.gpu
import dp_fast.backends as B
REPO = Path(__file__).resolve().parents[2]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=1e-2, atol=1e-5),
       torch.float16: dict(rtol=1e-2, atol=1e-5)}
ACTION_SHAPES = [(1, 10, 7), (7, 16, 10), (64, 10, 7), (256, 16, 10)]
CROPS = [(2, 3, 84, 84, 76, 76), (128, 3, 84, 84, 76, 76), (7, 3, 20, 20, 13, 13), (1, 3, 20, 24, 13, 17)]


def gpu_backends():
    out = []
    for name in ("cuda", "triton"):
        try:
            B.resolve_op_backend("ddpm_step", name, "cuda")
            marks = ()
        except B.BackendUnavailable as e:
            marks = (pytest.mark.skip(reason=str(e)),)
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def close(out, ref):
    assert out.dtype == ref.dtype and out.shape == ref.shape and out.device == ref.device
    torch.testing.assert_close(out.float(), ref.float(), **TOL[ref.dtype])


def gen(seed):
    return torch.Generator(device="cuda").manual_seed(seed)


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ACTION_SHAPES, ids=str)
@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_ddpm_step(backend, dtype, shape, kind):
    cfg = SchedulerConfig() if kind == "ddpm" else SchedulerConfig(kind="ddim", eta=0.5)
    k = 100 if kind == "ddpm" else 10
    table = NoiseScheduler(cfg, device="cuda").step_table(k)
    g = gen(1)
    x, m, n = (torch.randn(shape, device="cuda", generator=g).to(dtype) for _ in range(3))
    for i in (0, k // 2, k - 1):
        step = torch.tensor(i, device="cuda")
        close(ddpm_step(x, m, n, table, step, backend=backend), ddpm_step_ref(x, m, n, table, step))
    bad = ddpm_step(x, m, n, table, torch.tensor(k, device="cuda"), backend=backend)
    assert bad.isnan().all()  # no host sync to raise: NaN marks the bad step


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("shape", ACTION_SHAPES, ids=str)
def test_add_noise(backend, dtype, shape):
    abar = NoiseScheduler(SchedulerConfig(), device="cuda").alphas_cumprod
    g = gen(2)
    x0, n = (torch.randn(shape, device="cuda", generator=g).to(dtype) for _ in range(2))
    t = torch.randint(0, 100, (shape[0],), device="cuda", generator=g)
    close(add_noise(x0, n, t, abar, backend=backend), add_noise_ref(x0, n, t, abar))
    t[0] = 100
    out = add_noise(x0, n, t, abar, backend=backend)
    assert out[0].isnan().all() and not out[1:].isnan().any()


@pytest.mark.parametrize("backend", gpu_backends())
@pytest.mark.parametrize("dtype", [torch.uint8] + FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("case", CROPS, ids=lambda c: "x".join(map(str, c)))
def test_random_crop_bit_exact(backend, dtype, case):
    n, c, H, W, h, w = case
    g = gen(3)
    x = (torch.randint(0, 256, (n, c, H, W), device="cuda", generator=g, dtype=torch.uint8) if dtype == torch.uint8
         else torch.rand((n, c, H, W), device="cuda", generator=g).to(dtype))
    off = random_crop_offsets(n, (H, W), (h, w), generator=g, device="cuda")
    off[0, 0], off[0, 1] = H - h, W - w
    for normalize in (True, False):
        assert torch.equal(random_crop(x, off, (h, w), normalize=normalize, backend=backend),
                           random_crop_ref(x, off, (h, w), normalize))
    assert torch.equal(center_crop(x, (h, w), backend=backend), center_crop(x, (h, w), backend="reference"))
    off[-1, 0] = H - h + 1
    out = random_crop(x, off, (h, w), backend=backend)
    assert out[-1].isnan().all() and (n == 1 or not out[:-1].isnan().any())


def test_offsets_on_device_reach_every_position():
    g = gen(4)
    off = random_crop_offsets(20000, (84, 84), 76, generator=g, device="cuda")
    assert off.device.type == "cuda"
    for col in (0, 1):
        counts = torch.bincount(off[:, col], minlength=9).cpu()
        assert counts.numel() == 9 and (counts > 0).all()
    orig = random_crop_offsets(20000, (84, 84), 76, generator=g, device="cuda", mode="original")
    assert int(orig.max()) == 7


def _replay_check(fn, update, check, warmup_args=()):
    """Capture fn() once in a CUDA graph, then for each update(): refill inputs in place, replay, check."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()  # warm-up outside capture: Triton compiles, allocator settles
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for i in range(3):
        update(i)
        graph.replay()
        torch.cuda.synchronize()
        check(out)


@pytest.mark.parametrize("backend", gpu_backends())
def test_cuda_graph_ddpm_step(backend):
    table = NoiseScheduler(SchedulerConfig(), device="cuda").step_table(100)
    x, m, n = (torch.randn(7, 16, 10, device="cuda") for _ in range(3))
    step = torch.zeros((), dtype=torch.int64, device="cuda")

    def update(i):
        step.fill_((99, 0, 37)[i])
        x.normal_()

    _replay_check(lambda: ddpm_step(x, m, n, table, step, backend=backend), update,
                  lambda out: close(out, ddpm_step_ref(x, m, n, table, step)))


@pytest.mark.parametrize("backend", gpu_backends())
def test_cuda_graph_add_noise(backend):
    abar = NoiseScheduler(SchedulerConfig(), device="cuda").alphas_cumprod
    x0, n = (torch.randn(64, 10, 7, device="cuda") for _ in range(2))
    t = torch.zeros(64, dtype=torch.int64, device="cuda")

    def update(i):
        t.random_(0, 100)
        x0.normal_()

    _replay_check(lambda: add_noise(x0, n, t, abar, backend=backend), update,
                  lambda out: close(out, add_noise_ref(x0, n, t, abar)))


@pytest.mark.parametrize("backend", gpu_backends())
def test_cuda_graph_random_crop_with_offsets_drawn_in_the_graph(backend):
    """Offsets drawn on the device inside the graph: every replay crops at fresh offsets."""
    x = torch.randint(0, 256, (128, 3, 84, 84), dtype=torch.uint8, device="cuda")
    holder = {}

    def fn():
        holder["off"] = random_crop_offsets(128, (84, 84), 76, device="cuda")
        return random_crop(x, holder["off"], 76, backend=backend)

    seen = []

    def check(out):
        seen.append(holder["off"].clone())
        assert torch.equal(out, random_crop_ref(x, holder["off"], 76))

    _replay_check(fn, lambda i: x.random_(0, 256), check)
    assert not torch.equal(seen[0], seen[1])


@pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="dp_fast._C was built without CUDA kernels")
def test_opcheck_cuda():
    abar = NoiseScheduler(SchedulerConfig(), device="cuda").alphas_cumprod
    table = NoiseScheduler(SchedulerConfig(), device="cuda").step_table(100)
    x, m, n = (torch.randn(7, 16, 10, device="cuda") for _ in range(3))
    t = torch.randint(0, 100, (7,), device="cuda")
    img = torch.randint(0, 256, (4, 3, 20, 24), dtype=torch.uint8, device="cuda")
    off = torch.tensor([[0, 0], [7, 7], [3, 5], [7, 0]], device="cuda")
    torch.library.opcheck(torch.ops.dp_fast.ddpm_step.default, (x, m, n, table, torch.tensor(3, device="cuda")))
    torch.library.opcheck(torch.ops.dp_fast.add_noise.default, (x, n, t, abar))
    torch.library.opcheck(torch.ops.dp_fast.random_crop.default, (img, off, 13, 17, True))


@pytest.mark.skipif(not _ext.has_cuda_kernels(), reason="dp_fast._C was built without CUDA kernels")
def test_torch_compile_fullgraph_cuda():
    table = NoiseScheduler(SchedulerConfig(), device="cuda").step_table(100)
    x, m, n = (torch.randn(7, 16, 10, device="cuda") for _ in range(3))
    step = torch.tensor(5, device="cuda")
    fn = torch.compile(lambda *a: ddpm_step(*a, backend="cuda") * 2, fullgraph=True)
    close(fn(x, m, n, table, step), ddpm_step_ref(x, m, n, table, step) * 2)


SANITIZER_SCRIPT = textwrap.dedent("""
    import importlib, torch
    from dp_fast.config import SchedulerConfig
    from dp_fast.ops import add_noise, ddpm_step, random_crop, random_crop_offsets
    from dp_fast.schedulers import NoiseScheduler
    import dp_fast.backends as B
    sched = NoiseScheduler(SchedulerConfig(), device="cuda")
    table, abar = sched.step_table(100), sched.alphas_cumprod
    for backend in [b for b in ("cuda", "triton") if B.available_backends()[b]["available"]]:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            # odd sizes and an offset view: tails and unaligned (non-vector) paths
            x, m, n = (torch.randn(7 * 16 * 10 + 1, device="cuda").to(dtype)[1:].view(7, 16, 10) for _ in range(3))
            ddpm_step(x, m, n, table, torch.tensor(3, device="cuda"), backend=backend)
            add_noise(x, n, torch.randint(0, 100, (7,), device="cuda"), abar, backend=backend)
        img = torch.randint(0, 256, (5, 3, 21, 23), dtype=torch.uint8, device="cuda")
        off = random_crop_offsets(5, (21, 23), (13, 17), device="cuda")
        random_crop(img, off, (13, 17), backend=backend)
        off[0, 0] = 100  # out of range: must give NaN, not an out-of-bounds read
        random_crop(img, off, (13, 17), backend=backend)
    torch.cuda.synchronize()
    print("SANITIZER_SCRIPT_OK")
""")


# what compute-sanitizer prints where it cannot instrument this device (seen on gVisor machines)
SANITIZER_REFUSED = ("Device not supported", "error 999", "CUDA_ERROR_UNKNOWN")


def test_compute_sanitizer_memcheck():
    candidates = [os.path.join(d, "bin", "compute-sanitizer") for d in
                  (os.environ.get("CUDA_HOME"), "/usr/local/cuda") if d]
    exe = shutil.which("compute-sanitizer") or next((p for p in candidates if os.path.exists(p)), None)
    if exe is None:
        pytest.skip("compute-sanitizer not found (CUDA toolkit bin/ on PATH)")
    limit = float(os.environ.get("DP_FAST_SANITIZER_TIMEOUT", "600"))
    try:
        proc = subprocess.run([exe, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-c",
                               SANITIZER_SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        pytest.skip(f"compute-sanitizer did not finish within {limit:.0f} s (DP_FAST_SANITIZER_TIMEOUT)")
    tail = (proc.stdout + proc.stderr)[-4000:]
    refused = [m for m in SANITIZER_REFUSED if m in proc.stdout + proc.stderr]
    if refused and "SANITIZER_SCRIPT_OK" not in proc.stdout:
        pytest.skip(f"compute-sanitizer refuses this device ({refused[0]!r}): {tail[-300:]}")
    assert proc.returncode == 0 and "SANITIZER_SCRIPT_OK" in proc.stdout, tail
    assert "ERROR SUMMARY: 0 errors" in proc.stdout + proc.stderr, tail
