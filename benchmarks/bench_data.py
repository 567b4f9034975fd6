"""Training-batch fetch: RobomimicImageDataset.get_batch (vectorised gathers) vs the original's
per-sample __getitem__ collated by a DataLoader (num_workers=0).

Seed-configuration shapes: two 84x84 rgb cameras, three low-dim keys, action 7, horizon 10, To 2, Ta 8;
50 synthetic episodes x 150 frames, written once per session to a temporary hdf5 file. Batch 64.
Rows of the group (samples/s in extra_info):
  original_dataloader   per-sample Python/numpy as the original (float32 images / 255), default collate
  get_batch_uint8       ours, as the trainer uses it (uint8 images; the policy divides by 255)
  get_batch_float       ours + the uint8 -> float32 / 255 conversion, the original's output format
  get_batch_cuda        ours with the buffer resident on the GPU (only with CUDA)
DP_FAST_BENCH_GPU_ONLY=1 leaves out the three CPU rows (the group then has no reference row).
Run: pytest benchmarks/bench_data.py --benchmark-only
"""
import itertools

import numpy as np
import pytest
import torch

from dp_fast.config import SEED_SHAPE_META
from dp_fast.data import RobomimicImageDataset
from tests.data.make_hdf5 import write_small
from tests.data.original_ref import OriginalStyleDataset

from benchmarks._common import cpu_row

BATCH, HORIZON, TO, TA = 64, 10, 2, 8
N_EPISODES, EP_LEN = 50, 150
GROUP = f"data_batch{BATCH}_2x84x84_h{HORIZON}"


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench_data") / "synthetic.hdf5"
    write_small(path, [EP_LEN] * N_EPISODES, shape_meta=SEED_SHAPE_META, seed=0)
    ours = RobomimicImageDataset(path, SEED_SHAPE_META, HORIZON, TO, TA, val_ratio=0.02, seed=42)
    buf = ours.replay_buffer
    rgb = [k for k, m in SEED_SHAPE_META["obs"].items() if m.get("type") == "rgb"]
    low = [k for k in SEED_SHAPE_META["obs"] if k not in rgb]
    # the original's replay buffer layout: images HWC
    data = {k: (v.permute(0, 2, 3, 1).contiguous() if k in rgb else v).numpy() for k, v in buf.data.items()}
    orig = OriginalStyleDataset(data, buf.episode_ends, rgb, low, HORIZON, TO, TA, episode_mask=ours.train_mask)
    assert len(orig) == len(ours)
    return ours, orig


def index_batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return itertools.cycle([torch.randint(0, n, (BATCH,), generator=g) for _ in range(64)])


def check_same(ours, orig, idx):
    a = ours.get_batch(idx)
    b = torch.utils.data.default_collate([orig[i] for i in idx.tolist()])
    torch.testing.assert_close(a["action"].cpu(), b["action"], rtol=0, atol=0)
    for k, v in b["obs"].items():
        got = a["obs"][k].cpu()
        got = got.float() / 255.0 if got.dtype == torch.uint8 else got
        torch.testing.assert_close(got, v, rtol=0, atol=0)


def _report(benchmark):
    benchmark.extra_info["batch"] = BATCH
    benchmark.extra_info["samples_per_s"] = round(BATCH / benchmark.stats.stats.mean, 1)


@cpu_row
def test_original_dataloader(benchmark, datasets):
    ours, orig = datasets
    batches = index_batches(len(ours))
    check_same(ours, orig, next(batches))
    loader = torch.utils.data.DataLoader(orig, batch_sampler=[b.tolist() for b in itertools.islice(batches, 64)] * 1000,
                                         num_workers=0)
    it = iter(loader)
    benchmark.group = GROUP
    benchmark.extra_info["row"] = "reference"  # per-sample DataLoader baseline, as the original
    out = benchmark(lambda: next(it))
    assert out["action"].shape == (BATCH, HORIZON, 7)
    _report(benchmark)


@cpu_row
def test_get_batch_uint8(benchmark, datasets):
    ours, orig = datasets
    batches = index_batches(len(ours))
    check_same(ours, orig, next(batches))
    benchmark.group = GROUP
    benchmark.extra_info["row"] = "get_batch_uint8"
    out = benchmark(lambda: ours.get_batch(next(batches)))
    assert out["obs"]["agentview_image"].shape == (BATCH, TO, 3, 84, 84)
    _report(benchmark)


@cpu_row
def test_get_batch_float(benchmark, datasets):
    ours, _ = datasets
    batches = index_batches(len(ours))

    def fetch():
        b = ours.get_batch(next(batches))
        b["obs"] = {k: v.float().div_(255.0) if v.dtype == torch.uint8 else v for k, v in b["obs"].items()}
        return b

    benchmark.group = GROUP
    benchmark.extra_info["row"] = "get_batch_float"
    out = benchmark(fetch)
    assert out["obs"]["agentview_image"].dtype == torch.float32
    _report(benchmark)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_get_batch_cuda(benchmark, datasets):
    ours, orig = datasets
    gpu = RobomimicImageDataset(None, SEED_SHAPE_META, HORIZON, TO, TA, val_ratio=0.02, seed=42, device="cuda",
                                buffer=_copy_buffer(ours.replay_buffer))
    batches = itertools.cycle([b.cuda() for b in itertools.islice(index_batches(len(ours)), 64)])
    check_same(gpu, orig, next(batches).cpu())

    def fetch():
        b = gpu.get_batch(next(batches))
        torch.cuda.synchronize()
        return b

    for _ in range(5):
        fetch()
    benchmark.group = GROUP
    benchmark.extra_info["row"] = "get_batch_cuda"
    benchmark(fetch)
    _report(benchmark)


def _copy_buffer(buf):
    from dp_fast.data import ReplayBuffer
    return ReplayBuffer({k: v.clone() for k, v in buf.data.items()}, np.array(buf.episode_ends), buf.demo_names)
