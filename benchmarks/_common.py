"""Shared by benchmarks/bench_*.py: which devices get rows, and pedantic rounds bounded in time on CUDA.

DP_FAST_BENCH_GPU_ONLY=1 drops the CPU rows and groups (benchmarks/gpu_first.sh sets it: CPU numbers are
taken on the CPU machines, not on device time). pytest-benchmark's --benchmark-max-time bounds the
calibrated `benchmark(fn)` runs but not `benchmark.pedantic(...)`, whose rounds are fixed by the caller;
`pedantic()` below caps those rounds on CUDA so that rounds x iterations x one call's time stays within
--benchmark-max-time (never under --benchmark-min-rounds).
"""
from __future__ import annotations

import os
import time
from typing import Callable, List

import pytest

GPU_ONLY_ENV = "DP_FAST_BENCH_GPU_ONLY"


def gpu_only() -> bool:
    return os.environ.get(GPU_ONLY_ENV, "").strip().lower() in ("1", "true", "on", "yes")


def devices() -> List[str]:
    """The devices that get rows: cpu (unless GPU-only), then cuda where a device is visible."""
    import torch

    out = [] if gpu_only() else ["cpu"]
    if torch.cuda.is_available():
        out.append("cuda")
    return out


cpu_row = pytest.mark.skipif(gpu_only(), reason=f"CPU row, and {GPU_ONLY_ENV}=1")


def capped_rounds(benchmark, fn: Callable[[], object], rounds: int, iterations: int = 1) -> int:
    """`rounds`, lowered so that rounds * iterations calls of fn take about --benchmark-max-time.

    Times one call of fn (which must synchronize the device itself); that call doubles as a warm-up.
    Records the requested count in extra_info["rounds_requested"] when it lowers it."""
    if getattr(benchmark, "disabled", False):
        return rounds
    max_time = float(getattr(benchmark, "_max_time", 1.0))
    min_rounds = int(getattr(benchmark, "_min_rounds", 5))
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-9) * iterations
    cap = max(min_rounds, int(max_time / one))
    if cap < rounds:
        benchmark.extra_info["rounds_requested"] = rounds
        return cap
    return rounds


def pedantic(benchmark, fn: Callable[[], object], *, rounds: int, iterations: int = 1, warmup_rounds: int = 0,
             cuda: bool):
    """benchmark.pedantic(fn, ...) with the rounds bounded by --benchmark-max-time on CUDA."""
    if cuda:
        rounds = capped_rounds(benchmark, fn, rounds, iterations)
    return benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=warmup_rounds)
