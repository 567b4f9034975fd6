"""The training steps that benchmarks/bench_ddp.py times: a Trainer of the seed configuration on a
synthetic seed-shaped dataset, stepped through its own train_batch (shard, draws, DDP all-reduce,
AdamW, EMA). bench_ddp.py is rank 0 itself; the other ranks run this module:

    python -m benchmarks.ddp_steps DATASET OUT PER_RANK_BATCH STEPS THREADS   (env: RANK, WORLD_SIZE, ...)
"""
from __future__ import annotations

import itertools
import sys
from typing import Callable, Tuple

import torch

from dp_fast.train.config import build_config
from dp_fast.train.trainer import Trainer


def make_trainer(dataset: str, out: str, per_rank: int, threads: int, device: str) -> Trainer:
    cfg = build_config("seed", {"task.dataset_path": dataset, "dataloader.batch_size": per_rank,
                                "training.device": device, "training.num_threads": threads,
                                "training.rollout_every": 0, "training.resume": False,
                                "training.checkpoint_every_steps": 0})
    return Trainer(cfg, out, quiet=True)


def stepper(trainer: Trainer) -> Tuple[Callable[[], None], int]:
    """(one global training step, synchronised with the device; the global batch size)."""
    batches = itertools.chain.from_iterable(iter(trainer.batches) for _ in itertools.count())

    def step() -> None:
        trainer.train_batch(next(batches))
        trainer.global_step += 1
        if trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)

    return step, trainer.batches.batch_size


def main(argv) -> int:
    dataset, out, per_rank, steps, threads, device = argv
    trainer = make_trainer(dataset, out, int(per_rank), int(threads), device)
    step, _ = stepper(trainer)
    for _ in range(int(steps)):
        step()
    trainer.dist.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
