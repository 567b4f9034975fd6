"""Where predict_action's time goes on the CPU (seed configuration): encoder, K-step loop, the rest, for
the reference and the `cpu` backend, against this machine's measured fp32 / bf16 matmul rates.

    python benchmarks/time_split.py [--threads N] [--rounds R] [--bf16] [--json OUT.json]

FLOPs are counted by torch.utils.flop_counter (matmuls and convolutions) on the reference; the rate of a
part is its FLOPs over its time. The matmul rates are torch.mm of n x n x n, n = 1024 and 2048 (fp32, bf16),
on the same threads: a ceiling the loop and the encoder can be read against. For the `cpu` rows the loop's
weight blob (the matmul weights it reads every denoising step) is also timed as a plain read (a sum over a
tensor of its size, on the same threads): K x that time is the floor of a loop that streams its weights,
which bounds it at B=1 where they do not stay in cache. Wall time, minimum of the rounds.
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dp_fast import DiffusionPolicy, PolicyConfig, SchedulerConfig

CASES = {"B1_ddpm100": (1, {}), "B8_ddpm100": (8, {}),
         "B1_ddim10": (1, {"num_inference_steps": 10, "scheduler": SchedulerConfig(kind="ddim")}),
         "B8_ddim10": (8, {"num_inference_steps": 10, "scheduler": SchedulerConfig(kind="ddim")})}


def _best(fn, rounds):
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(dtype, n=1024, rounds=10) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n ** 3 / _best(lambda: torch.mm(a, b), rounds) / 1e9


def read_ms(nbytes: int, rounds=20) -> float:
    """Time of one plain read of nbytes (fp32 sum), warm: the weight stream's floor per denoising step."""
    t = torch.ones(max(nbytes // 4, 1))
    return _best(lambda: t.sum(), rounds) * 1e3


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def split(batch: int, overrides: dict, backend: str, rounds: int, precision: str = "fp32"):
    torch.manual_seed(0)
    p = DiffusionPolicy(PolicyConfig(**overrides), backend=backend, precision=precision).eval()
    g = torch.Generator().manual_seed(1)
    obs = {k: (torch.randint(0, 256, (batch, 2, *m["shape"]), generator=g, dtype=torch.uint8)
               if m.get("type") == "rgb" else torch.randn(batch, 2, *m["shape"], generator=g))
           for k, m in p.config.shape_meta["obs"].items()}
    noise = torch.randn(p.noise_draws(), *p.trajectory_shape(batch), generator=g)
    with torch.no_grad():
        nobs, b = p.prepare_obs(obs)
        feats = p.encode_obs(nobs, b)
        sampler = p.sampler
        total = _best(lambda: p.predict_action(obs, noise=noise), rounds)
        enc = _best(lambda: p.encode_obs(nobs, b), rounds)
        loop = _best(lambda: p._run_sampler(sampler, feats, noise, None), rounds)
        ref = DiffusionPolicy(PolicyConfig(**overrides), backend="reference").eval()
        ref.load_state_dict(p.state_dict())
        enc_flops = _flops(lambda: ref.encode_obs(nobs, b))
        loop_flops = _flops(lambda: ref.sample(feats, noise))
    blob = getattr(sampler, "weights", None)  # CpuSampler's packed matmul weights
    stream = {}
    if isinstance(blob, torch.Tensor):
        steps = p.config.num_inference_steps or p.config.scheduler.num_train_timesteps
        nbytes = blob.numel() * blob.element_size()
        ms = read_ms(nbytes)
        stream = {"weight_blob_mb": nbytes / 2 ** 20, "weight_read_ms": ms, "loop_floor_ms": steps * ms,
                  "weight_read_gb_per_s": nbytes / ms / 1e6}
    return {**stream, "total_ms": total * 1e3, "encoder_ms": enc * 1e3, "loop_ms": loop * 1e3,
            "rest_ms": max(total - enc - loop, 0.0) * 1e3,
            "encoder_gflop": enc_flops / 1e9, "loop_gflop": loop_flops / 1e9,
            "encoder_gflops_per_s": enc_flops / enc / 1e9, "loop_gflops_per_s": loop_flops / loop / 1e9,
            "describe": p.describe_backends()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    ap.add_argument("--bf16", action="store_true", help="also the cpu backend with precision='bf16'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "torch": torch.__version__, "cases": {}}
    for n in (1024, 2048):
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            out[f"matmul_gflops_{name}_{n}"] = matmul_rate(dtype, n)
    print(f"{args.threads} threads; torch.mm n^3, n = 1024 / 2048: fp32 {out['matmul_gflops_fp32_1024']:.0f} / "
          f"{out['matmul_gflops_fp32_2048']:.0f} GFLOP/s, bf16 {out['matmul_gflops_bf16_1024']:.0f} / "
          f"{out['matmul_gflops_bf16_2048']:.0f} GFLOP/s")
    print(f"{'case':12s} {'backend':9s} {'total':>8s} {'encoder':>8s} {'loop':>8s} {'rest':>6s}  "
          f"{'enc GFLOP/s':>11s} {'loop GFLOP/s':>12s} {'weights MB':>10s} {'read GB/s':>9s} {'loop floor':>10s}")
    rows = [("reference", "fp32"), ("cpu", "fp32")] + [("cpu", "bf16")] * args.bf16
    for name, (batch, overrides) in CASES.items():
        for backend, precision in rows:
            r = split(batch, overrides, backend, args.rounds, precision)
            label = backend if precision == "fp32" else f"{backend}_{precision}"
            out["cases"][f"{name}_{label}"] = r
            extra = (f" {r['weight_blob_mb']:10.1f} {r['weight_read_gb_per_s']:9.0f} {r['loop_floor_ms']:10.1f}"
                     if "weight_blob_mb" in r else "")
            print(f"{name:12s} {label:9s} {r['total_ms']:8.1f} {r['encoder_ms']:8.1f} {r['loop_ms']:8.1f} "
                  f"{r['rest_ms']:6.1f}  {r['encoder_gflops_per_s']:11.0f} {r['loop_gflops_per_s']:12.0f}{extra}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
