"""`dp-fast` command line: demo (here), demos and eval (dp_fast.sim), train (dp_fast.train.cli),
convert (dp_fast.data.convert), curves (dp_fast.train.curves_cli), export (dp_fast.export)."""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from .atomic_file import atomic_write
from . import export as export_cli
from .backends import available_backends
from .config import PolicyConfig
from .data import convert as convert_cli
from .load import load_policy
from .policy import DiffusionPolicy
from .sim import demos as demos_cli
from .sim import eval as eval_cli
from .train import cli as train_cli
from .train import curves_cli
from .train.distributed import world_size_from_env


def _demo(args) -> int:
    torch.manual_seed(args.seed)
    if args.checkpoint:
        path = Path(args.checkpoint)
        if path.suffix == ".zst":
            path = _decompress_zst(path, Path(args.workdir))
        print(f"loading {path}")

        def build(backend):
            return load_policy(path, device=args.device, backend=backend)
    else:
        print("no --checkpoint given: building the seed configuration with random weights")
        policy = DiffusionPolicy(PolicyConfig(), backend="reference").to(args.device).eval()
        path = Path(args.workdir) / "seed_policy.safetensors"
        policy.save(path)
        print(f"saved {path}; loading it back")

        def build(backend):
            return load_policy(path, device=args.device, backend=backend)
    policy = build(args.backend)
    c = policy.config
    print(f"policy: {len(c.rgb_keys)} camera(s) {list(c.rgb_keys)}, low-dim {list(c.low_dim_keys)}, "
          f"horizon {c.horizon}, n_obs_steps {c.n_obs_steps}, n_action_steps {c.n_action_steps}, "
          f"{c.n_layer} layers x {c.n_emb}, K = {policy.num_inference_steps} {c.scheduler.kind} steps")
    print("backends:", ", ".join(f"{k}: {'yes' if v['available'] else 'no'}" for k, v in available_backends().items()))
    torch.set_printoptions(precision=4, sci_mode=False)

    noise = None
    if args.expected:
        # Ground truth recorded from the original diffusion_policy code for this checkpoint:
        # the same observations and injected noise must give the same actions.
        exp = torch.load(args.expected, map_location=args.device, weights_only=True)
        obs, noise = exp["obs"], exp["noise"]
        with torch.no_grad():
            out = policy.predict_action(obs, noise=noise)
        err = (out["action"] - exp["action"]).abs().max().item()
        print(f"actions vs the original implementation's recorded actions (same obs and noise): "
              f"max |diff| = {err:.2e}")
    else:
        obs = _random_obs(policy, args.batch)
        with torch.no_grad():
            out = policy.predict_action(obs)
    print(f"action chunk for batch element 0 (shape {tuple(out['action'].shape)}, backend {policy.backend}):")
    print(out["action"][0].cpu())

    rows = [policy.backend] + (["reference"] if policy.backend != "reference" else [])
    batch = next(iter(obs.values())).shape[0]
    print(f"predict_action latency, B={batch}, {torch.get_num_threads()} threads, "
          f"{args.repeats} calls after a warm-up:")
    for name in rows:
        p = policy if name == policy.backend else build(name)
        times = _time_predict(p, obs, noise, args.repeats)
        print(f"  {name:10s} median {statistics.median(times) * 1e3:8.1f} ms   min {min(times) * 1e3:8.1f} ms")
    return 0


def _time_predict(policy, obs, noise, repeats: int) -> List[float]:
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            out = policy.predict_action(obs, noise=noise)
            if out["action"].is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return times[1:]  # the first call warms up


def _random_obs(policy, batch: int):
    obs = {}
    for key, meta in policy.config.shape_meta["obs"].items():
        shape = (batch, policy.n_obs_steps, *meta["shape"])
        if meta.get("type", "low_dim") == "rgb":
            obs[key] = torch.randint(0, 256, shape, dtype=torch.uint8)
        else:
            obs[key] = torch.randn(shape) * 0.1
    return obs


def _decompress_zst(path: Path, workdir: Path) -> Path:
    import zstandard  # optional: the dev extra, for the recorded fixtures

    out = workdir / path.name[:-4]
    if not out.exists():
        with atomic_write(out, suffix=".part") as tmp, open(path, "rb") as f, open(tmp, "wb") as o:
            zstandard.ZstdDecompressor(max_window_size=2 ** 28).copy_stream(f, o)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dp-fast", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="load a checkpoint (or build the seed config), predict actions, print latency")
    d.add_argument("--checkpoint", help="dp_fast .safetensors, original .ckpt, or .ckpt.zst")
    d.add_argument("--expected", help="recorded outputs of the original code for this checkpoint (obs, noise, "
                                      "action); the demo then checks the actions against them")
    d.add_argument("--device", default="cpu")
    d.add_argument("--backend", default=None)
    d.add_argument("--batch", type=int, default=1, help="batch of random observations (without --expected)")
    d.add_argument("--repeats", type=int, default=3)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--workdir", default="out/demo")
    d.set_defaults(func=_demo)
    # the other subcommands live in their own modules, each with add_arguments(parser) and run(args) -> int;
    # the simulator (the optional `sim` extra) is imported only when demos / eval run
    for name, mod, help_text in (
            ("demos", demos_cli, "generate scripted-expert demonstrations in robomimic's hdf5 layout"),
            ("train", train_cli, "train a policy from a robomimic hdf5 file or a LeRobotDataset v3.0 folder "
                                 "(resumes in the same --out)"),
            ("eval", eval_cli, "evaluate a policy by rollouts in robosuite"),
            ("convert", convert_cli, "write a LeRobotDataset v3.0 copy of a robomimic hdf5 file (PyAV + pyarrow)"),
            ("curves", curves_cli, "draw a training run's curves (PNG) again from its logs.jsonl / steps.jsonl"),
            ("export", export_cli, "write a policy's encoder, denoiser and whole predict_action as ONNX graphs")):
        sp = sub.add_parser(name, help=help_text)
        mod.add_arguments(sp)
        sp.set_defaults(func=mod.run)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    if world_size_from_env() > 1:
        # a torchrun rank: its exception goes into torchrun's failure summary, the rank named
        return record(_main)(argv)
    return _main(argv)


def _main(argv: Optional[List[str]]) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
