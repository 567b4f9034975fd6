"""One training step at batch 64: loss + backward + AdamW step + EMA update, in samples/s, plain PyTorch
vs the fast options, for the seed configuration (both 84 px cameras, 8 x 256 transformer), the `cpu`
preset (the wrist camera at 48 px, a width-16 ResNet, 4 x 128 transformer, horizon 16: the demo's Lift
training) and the `cpu-can` preset (the same with agentview too: the seed-task CPU trainings).
Presets: DP_FAST_BENCH_TRAIN_PRESETS (default "seed,cpu,cpu-can").

Rows (group train_step_<preset>_B64_<device>):
  plain            compute_loss (fp32), torch.optim.AdamW defaults, EMA    -- the reference row
  fused_adamw      AdamW(fused=True)
  channels_last    the obs encoder in channels_last memory format
  fast_ops         compute_loss with the crop and add_noise on the device's fast ops (dp_fast.ops)
  bf16_autocast    forward under torch.autocast(bfloat16)
  compile          torch.compile of the denoiser and the camera ResNets: only with DP_FAST_BENCH_COMPILE=1
                   (it compiles two ResNets and the transformer, minutes of a short GPU slot)
  all              every option above that is available together (compile only with DP_FAST_BENCH_COMPILE=1)
Before timing, each row's first loss (same initial weights, same RNG state, same batch) is checked
against the plain row's: 1e-4 relative in fp32 (convolution order may differ), 5e-2 with bf16.
The model, batch and RNG are reset per row. Batch: DP_FAST_BENCH_TRAIN_BATCH (default 64).
Run: pytest benchmarks/bench_train.py --benchmark-only   (CPU: 2 rounds a row; CUDA: 20 after 5 warm-ups,
fewer where 20 would exceed --benchmark-max-time, see benchmarks/_common.py)
On a CPU shared with other jobs run it with OMP_NUM_THREADS=1: two OpenMP threads on two busy cores
were up to ~20x slower here (and made bf16 look 8x slower than fp32 instead of 1.8x faster).

Measured here (AMD EPYC 2 vCPU, AVX-512 bf16, torch 2.13.0+cpu, OMP_NUM_THREADS=1, load ~2, 2 rounds,
min s/step at B=64): plain 4.69, fused_adamw 4.55, fast_ops 4.51, channels_last 4.32, bf16_autocast 2.62,
all 2.37 (13.6 -> 27.0 samples/s, 1.98x); every row's first loss within tolerance of plain's.
"""
import os

import pytest
import torch

from dp_fast import DiffusionPolicy, PolicyConfig
from dp_fast.config import SEED_SHAPE_META
from dp_fast.data.frames import with_image_size
from dp_fast.train.config import build_config, policy_config_for
from dp_fast.train.ema import EMAModel

from benchmarks._common import gpu_only, pedantic

BATCH = int(os.environ.get("DP_FAST_BENCH_TRAIN_BATCH", "64"))
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PRESETS = [p for p in os.environ.get("DP_FAST_BENCH_TRAIN_PRESETS", "seed,cpu,cpu-can").split(",") if p]
CPU_IMAGE_SIZE = 48  # what scripts/task.sh records for the CPU presets
ROUNDS, WARMUP = (20, 5) if DEVICE.type == "cuda" else (2, 1)
COMPILE_OK = os.environ.get("DP_FAST_BENCH_COMPILE") == "1"
pytestmark = pytest.mark.skipif(gpu_only() and DEVICE.type != "cuda",
                                reason="CPU rows, and DP_FAST_BENCH_GPU_ONLY=1")


VARIANTS = {
    "plain": {},
    "fused_adamw": {"fused": True},
    "channels_last": {"channels_last": True},
    "fast_ops": {"fast_ops": True},
    "bf16_autocast": {"bf16": True},
    "compile": {"compile": True},
    "all": {"fused": True, "channels_last": True, "fast_ops": True, "bf16": True, "compile": COMPILE_OK},
}


def preset_config(preset: str) -> PolicyConfig:
    """The policy a training with `--preset preset` builds (the seed's keys; CPU presets at 48 px)."""
    if preset == "seed":
        return PolicyConfig()
    cfg = build_config(preset)
    meta = {"obs": {k: SEED_SHAPE_META["obs"][k] for k in cfg.task.obs_keys},
            "action": SEED_SHAPE_META["action"]}
    return policy_config_for(cfg, with_image_size(meta, CPU_IMAGE_SIZE))


def make_batch(cfg: PolicyConfig, b: int):
    g = torch.Generator().manual_seed(0)
    obs = {}
    for key, meta in cfg.shape_meta["obs"].items():
        shape = (b, cfg.n_obs_steps, *meta["shape"])
        if meta.get("type") == "rgb":
            obs[key] = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        else:
            obs[key] = torch.randn(shape, generator=g)
    batch = {"obs": obs, "action": torch.rand(b, cfg.horizon, cfg.action_dim, generator=g) * 2 - 1}
    return {"obs": {k: v.to(DEVICE) for k, v in batch["obs"].items()}, "action": batch["action"].to(DEVICE)}


def make_step(cfg: PolicyConfig, opts):
    """A fresh policy + AdamW (the original's groups) + EMA; returns step(batch) -> loss."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).to(DEVICE).train()
    if opts.get("channels_last"):
        policy.obs_encoder.to(memory_format=torch.channels_last)
    groups = policy.get_optim_groups(transformer_weight_decay=1e-3, obs_encoder_weight_decay=1e-6)
    kw = {"fused": True} if opts.get("fused") else {}
    opt = torch.optim.AdamW(groups, lr=1e-4, betas=(0.9, 0.95), **kw)
    ema = EMAModel(policy)
    if opts.get("compile"):
        from dp_fast.train.build import compile_for_training
        compile_for_training(policy)
    loss_backend = None if opts.get("fast_ops") else "reference"  # None: the policy's resolved ops

    def loss_fn(b):
        return policy.compute_loss(b, backend=loss_backend)
    use_bf16 = bool(opts.get("bf16"))

    def step(batch):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss = loss_fn(batch)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema.step(policy)
        return loss.detach()

    return step


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


_CASES = {}


def preset_case(preset: str):
    """(policy config, batch, the plain row's first loss) of a preset, built once."""
    if preset not in _CASES:
        cfg = preset_config(preset)
        batch = make_batch(cfg, BATCH)
        step = make_step(cfg, {})
        torch.manual_seed(1)
        _CASES[preset] = (cfg, batch, float(step(batch)))
    return _CASES[preset]


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("preset", PRESETS)
def test_train_step(benchmark, preset, name):
    opts = VARIANTS[name]
    if opts.get("compile") and not COMPILE_OK:
        pytest.skip("torch.compile row: set DP_FAST_BENCH_COMPILE=1")
    cfg, batch, plain_loss = preset_case(preset)
    step = make_step(cfg, opts)
    torch.manual_seed(1)
    first = float(step(batch))  # same weights, RNG and batch as the plain row's first step
    tol = 5e-2 if opts.get("bf16") else 1e-4
    assert abs(first - plain_loss) <= tol * abs(plain_loss), (name, first, plain_loss)
    for _ in range(WARMUP - 1):
        step(batch)
    _sync()

    def run():
        step(batch)
        _sync()

    benchmark.group = f"train_step_{preset}_B{BATCH}_{DEVICE.type}"
    pedantic(benchmark, run, rounds=ROUNDS, iterations=1, cuda=DEVICE.type == "cuda")
    benchmark.extra_info["row"] = "reference" if name == "plain" else name  # plain PyTorch = the baseline row
    benchmark.extra_info["batch"] = BATCH
    benchmark.extra_info["samples_per_s"] = round(BATCH / benchmark.stats.stats.mean, 2)
    benchmark.extra_info["first_loss"] = first
    benchmark.extra_info["plain_first_loss"] = plain_loss
