"""DistributedDataParallel training under torchrun (gloo, 2 CPU processes, spawned with a timeout):
the same losses, logs and weights as one process over the same global batches; gradient accumulation
(no_sync) and a checkpoint in the middle of an accumulation; a last global batch smaller than the world
(one rank with an empty shard); rank 0 alone writes; a SIGKILLed rank ends the job promptly, naming
it, and the same command resumes to the same weights; a rank that raises ends the job, naming it; a
different world size is refused on resume. The NCCL form of the equality test is marked gpu."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dp_fast.cli import main
from dp_fast.train.config import build_config
from dp_fast.train.distributed import Dist, slice_draws
from dp_fast.train.log import read_jsonl
from dp_fast.train.trainer import Trainer
from tests.train.common import overrides, write_tiny

ROOT = Path(__file__).resolve().parents[2]
WORLD = 2
PER_RANK = 3
# 8 episodes (7 for training) x 11 windows = 77 = 12 global batches of 6 + one of 5 (shards of 3 and 2);
# 6 episodes: 55 = 9 x 6 + 1 (rank 1's shard of the last batch is empty)
UNEVEN, EMPTY = 8, 6


def _args(data, out, per_rank: int, device: str = "cpu", epochs: int = 2):
    ov = overrides(data, training__num_epochs=epochs, training__checkpoint_every_steps=3, training__sample_every=1,
                   training__checkpoint_every=1, training__lr_warmup_steps=3, training__gradient_accumulate_every=2,
                   optimizer__lr=1e-3, dataloader__batch_size=per_rank, policy__p_drop_attn=0.0,
                   training__device=device)
    return ["train", "--quiet", "--out", str(out)] + \
        [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in ov.items()]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))


def _single(data, out, device="cpu", epochs=2):
    """One process, no torchrun, with the global batch (`python -m dp_fast`)."""
    p = subprocess.run([sys.executable, "-m", "dp_fast"] + _args(data, out, WORLD * PER_RANK, device, epochs), cwd=ROOT,
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]


def _torchrun(data, out, kill=None, device="cpu", epochs=2):
    """`torchrun --standalone --nproc_per_node=2 -m dp_fast train ...`; kill: see killed_run.py. Without
    a kill, ranks other than 0 fail if they write anything under `out` (rank_guard.py)."""
    module = ["tests.train.killed_run", kill] if kill else ["tests.train.rank_guard", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}", "-m"]
    t0 = time.monotonic()
    p = subprocess.run(cmd + module + _args(data, out, PER_RANK, device, epochs), cwd=ROOT, env=_env(),
                       capture_output=True, text=True, timeout=300)
    return p, time.monotonic() - t0


def _state(out):
    return torch.load(out / "checkpoints" / "latest.train.pt", map_location="cpu", weights_only=True)


def _losses(out):
    return [(r["global_step"], r["train_loss"]) for r in read_jsonl(out / "steps.jsonl")]


def _epoch_rows(out, drop=("steps_per_s", "world_size")):
    return [{k: v for k, v in r.items() if k not in drop} for r in read_jsonl(out / "logs.jsonl")]


def _assert_same_run(a, b, atol=2e-6):
    la, lb = _losses(a), _losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    torch.testing.assert_close(torch.tensor([v for _, v in la]), torch.tensor([v for _, v in lb]), rtol=1e-5, atol=atol)
    ra, rb = _epoch_rows(a), _epoch_rows(b)
    assert [sorted(r) for r in ra] == [sorted(r) for r in rb]
    for x, y in zip(ra, rb):
        for k, v in x.items():
            if isinstance(v, float):
                assert y[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
            else:
                assert y[k] == v, k
    sa, sb = _state(a), _state(b)
    for part in ("model", "ema"):
        for k, v in sa[part].items():
            torch.testing.assert_close(sb[part][k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{part}.{k}: {m}")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("ddp") / "tiny.hdf5", n_episodes=UNEVEN, length=12, smooth=True)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """(single-process out, torchrun out) of the same training."""
    base = tmp_path_factory.mktemp("ddp_runs")
    _single(data, base / "single")
    p, _ = _torchrun(data, base / "ddp")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return base / "single", base / "ddp"


def test_ddp_equals_single_process(runs):
    single, ddp = runs
    rows = read_jsonl(ddp / "logs.jsonl")
    assert [r["world_size"] for r in rows] == [WORLD, WORLD]
    assert [r["world_size"] for r in read_jsonl(single / "logs.jsonl")] == [1, 1]
    assert rows[-1]["global_step"] == 26        # 13 global batches per epoch, the last of 5 samples
    _assert_same_run(single, ddp)
    assert _state(ddp)["world_size"] == WORLD


def test_only_rank0_writes(runs):
    """Rank 1 ran under rank_guard (any write of it under OUT fails the run); the folder holds what one
    process writes."""
    single, ddp = runs
    files = lambda d: sorted(str(p.relative_to(d)) for p in d.rglob("*"))  # noqa: E731
    assert files(ddp) == files(single)
    assert len(read_jsonl(ddp / "steps.jsonl")) == 26


def test_rank_guard_catches_a_write(tmp_path):
    """rank_guard.py can fail: a write under OUT from a non-zero rank ends the process."""
    code = ("import os, sys; from pathlib import Path; from tests.train.rank_guard import install; "
            f"install(Path({str(tmp_path)!r})); open(Path({str(tmp_path)!r}) / 'x.txt', 'w')")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(_env(), RANK="1"), capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 97 and "rank_guard: rank 1 wrote" in p.stderr and "x.txt" in p.stderr, p.stderr[-2000:]


def test_killed_rank_ends_the_job_and_the_command_resumes(data, runs, tmp_path):
    _, ddp = runs
    out = tmp_path / "killed"
    # rank 1 dies after batch 10; the last checkpoint is step 9's, taken in the middle of a gradient
    # accumulation (the ranks' accumulated gradients averaged into it)
    p, seconds = _torchrun(data, out, kill="step:10@1")
    assert p.returncode != 0
    assert seconds < 120, f"the job took {seconds:.0f} s to end after a rank died"
    assert re.search(r"rank\s*:\s*1\b", p.stderr), p.stderr[-3000:]
    assert _state(out)["global_step"] == 9
    p, _ = _torchrun(data, out)
    assert p.returncode == 0, p.stderr[-4000:]
    _assert_same_run(ddp, out)


def test_empty_shard(tmp_path):
    """A last global batch of one sample: rank 1 has nothing of it, joins the all-reduce at weight 0."""
    data = write_tiny(tmp_path / "tiny6.hdf5", n_episodes=EMPTY, length=12, smooth=True)
    _single(data, tmp_path / "single", epochs=1)
    p, _ = _torchrun(data, tmp_path / "ddp", epochs=1)
    assert p.returncode == 0, p.stderr[-4000:]
    assert len(read_jsonl(tmp_path / "ddp" / "steps.jsonl")) == 10
    _assert_same_run(tmp_path / "single", tmp_path / "ddp")


def test_raising_rank_ends_the_job_naming_it(data, tmp_path):
    p, seconds = _torchrun(data, tmp_path / "raised", kill="raise:4@1")
    assert p.returncode != 0
    assert seconds < 120
    assert re.search(r"rank\s*:\s*1\b", p.stderr), p.stderr[-3000:]
    assert "killed_run: raised at step 4" in p.stderr


def test_resume_with_another_world_size_is_refused(data, runs, capsys):
    _, ddp = runs
    assert main(_args(data, ddp, WORLD * PER_RANK)) == 2     # one process on the 2-process run's folder
    err = capsys.readouterr().err
    assert "world_size 2" in err and "this run has 1" in err, err


def test_sliced_draws_give_the_global_batch_loss(data):
    """The DDP arithmetic on one process: the shards' losses, weighted by their sizes, are the global
    batch's loss when each takes its slice of the global draws (an empty shard included)."""
    cfg = build_config(None, overrides(data, policy__p_drop_attn=0.0))
    tr = Trainer(cfg, data.parent / "slices", quiet=True)
    policy = tr.policy.train().requires_grad_(False)
    idx = torch.arange(7)
    batch = tr.dataset.get_batch(idx)
    torch.manual_seed(3)
    draws = policy.loss_draws(len(idx))
    full = policy.compute_loss(batch, **draws)
    torch.manual_seed(3)
    assert float(policy.compute_loss(batch)) == pytest.approx(float(full), rel=1e-6)  # the same numbers as drawn inside
    for world in (2, 3, 8):
        total = 0.0
        for rank in range(world):
            local, start = Dist(rank=rank, world_size=world).shard(idx)
            if len(local) == 0:
                continue
            part = policy.compute_loss(tr.dataset.get_batch(local), **slice_draws(draws, len(idx), start, len(local)))
            total += float(part) * len(local) / len(idx)
        assert total == pytest.approx(float(full), rel=1e-5), world


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nccl_ddp_equals_single_process(data, tmp_path):
    _single(data, tmp_path / "single", device="cuda")
    p, _ = _torchrun(data, tmp_path / "ddp", device="cuda")
    assert p.returncode == 0, p.stderr[-4000:]
    _assert_same_run(tmp_path / "single", tmp_path / "ddp", atol=1e-4)
