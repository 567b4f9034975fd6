"""Data-parallel training throughput: samples/s of the seed configuration (both 84x84 cameras, 8 x 256
transformer), one global training step of the Trainer (dp_fast.train.trainer.train_batch: the rank's
shard of the global batch, DDP's gradient all-reduce, AdamW, EMA) for 1 process and for N processes
under torch.distributed (gloo on CPU, NCCL on CUDA).

Rows (group ddp_train_seed_<device>, per-rank batch DP_FAST_BENCH_DDP_BATCH, default 64):
  cpu:  reference        one process, one thread (the single-process trainer)
        1proc_2threads   one process, two threads (what a 2-core machine does without DDP)
        2proc_gloo       two processes of one thread each, DDP over gloo (global batch 2 x 64)
  cuda: reference        one process, one GPU
        <N>proc_nccl     N processes, one GPU each (N = the visible devices, when > 1)
This process is rank 0 (it times its own steps; a step ends when the all-reduce of every rank's
gradients has); ranks 1.. run benchmarks/ddp_steps.py with the same number of steps. samples/s =
global batch / mean step time. Synthetic data: 16 episodes x 100 frames, written once.
Run: pytest benchmarks/bench_ddp.py --benchmark-only   (CPU: 3 rounds after 1 warm-up; CUDA: 20 after 5)
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dp_fast.config import SEED_SHAPE_META
from tests.data.make_hdf5 import write_small

from benchmarks._common import gpu_only
from benchmarks.ddp_steps import make_trainer, stepper

ROOT = Path(__file__).resolve().parents[1]
PER_RANK = int(os.environ.get("DP_FAST_BENCH_DDP_BATCH", "64"))


def _rows():
    rows = [] if gpu_only() else [("cpu", 1, 1, "reference"), ("cpu", 1, 2, "1proc_2threads"),
                                  ("cpu", 2, 1, "2proc_gloo")]
    if torch.cuda.is_available():
        rows.append(("cuda", 1, 1, "reference"))
        n = torch.cuda.device_count()
        if n > 1:
            rows.append(("cuda", n, 1, f"{n}proc_nccl"))
    return rows


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("ddp_bench") / "seed.hdf5"
    write_small(path, [100] * 16, SEED_SHAPE_META)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device,world,threads,row", _rows(), ids=lambda v: str(v))
def test_ddp_train(benchmark, monkeypatch, tmp_path, dataset, device, world, threads, row):
    if getattr(benchmark, "disabled", False):
        pytest.skip("the other ranks run a fixed number of steps: run with --benchmark-only")
    warmup, rounds = (5, 20) if device == "cuda" else (1, 3)
    workers = []
    if world > 1:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "WORLD_SIZE": str(world)}
        for rank in range(1, world):
            e = dict(os.environ, **env, RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS=str(threads),
                     PYTHONPATH=str(ROOT))
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "benchmarks.ddp_steps", str(dataset), str(tmp_path / f"rank{rank}"),
                 str(PER_RANK), str(warmup + rounds), str(threads), device], cwd=ROOT, env=e))
        for k, v in dict(env, RANK="0", LOCAL_RANK="0").items():
            monkeypatch.setenv(k, v)
    n_threads = torch.get_num_threads()
    try:
        trainer = make_trainer(str(dataset), str(tmp_path / "rank0"), PER_RANK, threads, device)
        step, global_batch = stepper(trainer)
        benchmark.group = f"ddp_train_seed_{device}"
        benchmark.pedantic(step, rounds=rounds, iterations=1, warmup_rounds=warmup)
        trainer.dist.close()
        codes = [w.wait(timeout=300) for w in workers]
    finally:
        torch.set_num_threads(n_threads)
        for w in workers:
            w.kill()  # a no-op for those that ended; the others would wait for a rank 0 that failed
    assert codes == [0] * len(workers), codes
    benchmark.extra_info.update(row=row, world_size=world, threads_per_process=threads, per_rank_batch=PER_RANK,
                                global_batch=global_batch,
                                samples_per_s=round(global_batch / benchmark.stats.stats.mean, 2))
