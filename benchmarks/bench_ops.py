"""The hot ops of dp_fast.ops on every available backend, one benchmark group per (op, shape, device).

Every group has the `reference` (pure PyTorch) row; each fast row is checked once against the reference
before it is timed (fp32 1e-5; crops bit-exact). Rows: reference, cpu (C++ on CPU tensors), cuda and
triton (CUDA tensors). The Triton interpreter is not benchmarked (it measures Python, not the kernel).

On CUDA, pytest-benchmark's wall time per call includes the launch and a synchronize; extra_info also
holds the device time of one call (triton.testing.do_bench, else CUDA events), the bytes the op must
move, the achieved GB/s and its fraction of the ceiling. The ceiling (peak_gbps) is a device-to-device copy
of a large buffer measured once in the same run, bytes read plus bytes written (about 4.3 TB/s on an H200),
not the datasheet or the device properties (their memory clock and bus width may be None under CUDA 13).
DP_FAST_BENCH_GPU_ONLY=1 leaves out the CPU groups.

Run: pytest benchmarks/bench_ops.py --benchmark-only [--benchmark-json=out.json]
     python benchmarks/write_results.py out.json   # tables into benchmarks/RESULTS.md
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import pytest
import torch

from dp_fast.config import SchedulerConfig
from dp_fast.ops import add_noise, ddpm_step, random_crop, random_crop_offsets
from dp_fast.schedulers import NoiseScheduler

from benchmarks._common import devices

import dp_fast.backends as B

# group -> (op, shape). Seed shapes: action chunk (B, T=10, Da=10); training batch 64 x 2 cameras 3x84x84 -> 76.
GROUPS: Dict[str, Tuple[str, dict]] = {
    "ddpm_step_B1_T10_D10": ("ddpm_step", dict(shape=(1, 10, 10))),
    "ddpm_step_B64_T10_D10": ("ddpm_step", dict(shape=(64, 10, 10))),
    "add_noise_B64_T10_D10": ("add_noise", dict(shape=(64, 10, 10))),
    "random_crop_N128_3x84x84_to76_u8": ("random_crop", dict(n=128, c=3, hw=(84, 84), crop=(76, 76))),
}
ROWS = ("reference", "cpu", "cuda", "triton")
DEVICES = devices()
COPY_BYTES = 1 << 30  # per buffer of the ceiling's copy: far beyond the L2 (50 MB on an H100 / H200)

_cache: Dict[tuple, tuple] = {}


def _setup(group: str, device: str):
    """(fn(backend) -> output, bytes moved per call) for a group on a device, built once per session."""
    key = (group, device)
    if key in _cache:
        return _cache[key]
    op, p = GROUPS[group]
    g = torch.Generator().manual_seed(0)
    if op == "ddpm_step":
        table = NoiseScheduler(SchedulerConfig(), device=device).step_table(100)
        x, m, n = (torch.randn(p["shape"], generator=g).to(device) for _ in range(3))
        step = torch.tensor(50, device=device)

        def fn(backend):
            return ddpm_step(x, m, n, table, step, backend=backend)
        nbytes = 4 * x.numel() * x.element_size()  # 3 reads + 1 write
    elif op == "add_noise":
        abar = NoiseScheduler(SchedulerConfig(), device=device).alphas_cumprod
        x0, n = (torch.randn(p["shape"], generator=g).to(device) for _ in range(2))
        t = torch.randint(0, 100, (p["shape"][0],), generator=g).to(device)

        def fn(backend):
            return add_noise(x0, n, t, abar, backend=backend)
        nbytes = 3 * x0.numel() * x0.element_size() + t.numel() * 8
    else:
        (hh, ww), (h, w) = p["hw"], p["crop"]
        imgs = torch.randint(0, 256, (p["n"], p["c"], hh, ww), generator=g, dtype=torch.uint8).to(device)
        off = random_crop_offsets(p["n"], (hh, ww), (h, w), generator=g).to(device)

        def fn(backend):
            return random_crop(imgs, off, (h, w), backend=backend)
        out_numel = p["n"] * p["c"] * h * w
        nbytes = out_numel * (1 + 4)  # the cropped uint8 pixels read, float32 written
    _cache[key] = (fn, nbytes, op)
    return _cache[key]


def _check(op: str, out: torch.Tensor, ref: torch.Tensor) -> None:
    if op == "random_crop":
        assert torch.equal(out, ref), "crop differs from the reference"
    else:
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


_ceiling: Dict[str, float] = {}


def _copy_ceiling_gbps() -> float:
    """Device-to-device copy bandwidth in GB/s (bytes read + written), measured once per session on random
    data: the practical DRAM ceiling of this device in this run."""
    if "gbps" not in _ceiling:
        free, _ = torch.cuda.mem_get_info()
        nbytes = min(COPY_BYTES, free // 8) // 4 * 4
        src = torch.rand(nbytes // 4, device="cuda")
        dst = torch.empty_like(src)
        ms = _device_ms(lambda: dst.copy_(src))
        del src, dst
        torch.cuda.empty_cache()
        _ceiling.update(gbps=2 * nbytes / (ms * 1e-3) / 1e9, nbytes=nbytes)
    return _ceiling["gbps"]


def _device_ms(call: Callable[[], object]) -> float:
    try:
        from triton.testing import do_bench
        return float(do_bench(call, warmup=25, rep=100))
    except ImportError:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(10):
            call()
        start.record()
        for _ in range(100):
            call()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 100


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("group", list(GROUPS))
def test_op(benchmark, group, device, row):
    op = GROUPS[group][0]
    if row == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is not benchmarked")
    try:
        B.resolve_op_backend(op, row, device)
    except B.BackendUnavailable as e:
        pytest.skip(str(e))
    fn, nbytes, _ = _setup(group, device)
    out = fn(row)  # also the warm-up (Triton compiles here)
    _check(op, out, fn("reference"))
    cuda = device == "cuda"

    def call():
        fn(row)
        if cuda:
            torch.cuda.synchronize()

    benchmark.group = f"{group}_{device}"
    benchmark.extra_info.update(op=op, row=row, device=device, bytes=nbytes,
                                device_name=torch.cuda.get_device_name() if cuda else "cpu")
    if cuda:
        ms = _device_ms(lambda: fn(row))
        gbps = nbytes / (ms * 1e-3) / 1e9
        benchmark.extra_info.update(device_ms=round(ms, 5), gbps=round(gbps, 1))
        peak = _copy_ceiling_gbps()
        benchmark.extra_info.update(peak_gbps=round(peak, 1), peak_copy_bytes=int(_ceiling["nbytes"]),
                                    bandwidth_frac=round(gbps / peak, 3))
    benchmark(call)
