"""Where predict_action's time goes on the CPU (seed configuration): encoder, K-step loop, the rest, for
the reference and the `cpu` backend, against this machine's measured fp32 / bf16 matmul rates.

    python benchmarks/time_split.py [--threads N] [--json OUT.json]

FLOPs are counted by torch.utils.flop_counter (matmuls and convolutions) on the reference; the rate of a
part is its FLOPs over its time. The matmul rates are torch.mm of 1024 x 1024 x 1024 (fp32, bf16) on
the same threads: a ceiling the loop and the encoder can be read against. Wall time, minimum of the rounds.
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


def _flops(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def split(batch: int, overrides: dict, backend: str, rounds: int):
    torch.manual_seed(0)
    p = DiffusionPolicy(PolicyConfig(**overrides), backend=backend).eval()
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
    return {"total_ms": total * 1e3, "encoder_ms": enc * 1e3, "loop_ms": loop * 1e3,
            "rest_ms": max(total - enc - loop, 0.0) * 1e3,
            "encoder_gflop": enc_flops / 1e9, "loop_gflop": loop_flops / 1e9,
            "encoder_gflops_per_s": enc_flops / enc / 1e9, "loop_gflops_per_s": loop_flops / loop / 1e9,
            "describe": p.describe_backends()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {"threads": args.threads, "torch": torch.__version__,
           "matmul_gflops_fp32": matmul_rate(torch.float32), "matmul_gflops_bf16": matmul_rate(torch.bfloat16),
           "cases": {}}
    print(f"{args.threads} threads; torch.mm 1024^3: fp32 {out['matmul_gflops_fp32']:.0f} GFLOP/s, "
          f"bf16 {out['matmul_gflops_bf16']:.0f} GFLOP/s")
    print(f"{'case':12s} {'backend':9s} {'total':>8s} {'encoder':>8s} {'loop':>8s} {'rest':>6s}  "
          f"{'enc GFLOP/s':>11s} {'loop GFLOP/s':>12s}")
    for name, (batch, overrides) in CASES.items():
        for backend in ("reference", "cpu"):
            r = split(batch, overrides, backend, args.rounds)
            out["cases"][f"{name}_{backend}"] = r
            print(f"{name:12s} {backend:9s} {r['total_ms']:8.1f} {r['encoder_ms']:8.1f} {r['loop_ms']:8.1f} "
                  f"{r['rest_ms']:6.1f}  {r['encoder_gflops_per_s']:11.0f} {r['loop_gflops_per_s']:12.0f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
