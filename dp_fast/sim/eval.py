"""`dp-fast eval`: roll a policy checkpoint out in robosuite; print success rate and latency, write videos.

    dp-fast eval --policy out/lift/latest.safetensors --task lift --episodes 20 --envs 2 --video out/videos
    dp-fast eval --policy ckpt.safetensors --dataset lift.hdf5 --train-episodes 5 --episodes 20 \\
        --control-hz 10 --async --json out/eval.json

With --dataset the envs are built from the file's env_args (the cameras and render settings the policy
was trained on) and --train-episodes start from its demos' first states; otherwise --task names the
task. Test episodes use seeds --seed, --seed + 1, ... See dp_fast.sim.runner for the semantics and
dp_fast.sim.timing for the control-rate mode (--control-hz, --async).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, Optional, Sequence

import torch

from .. import load_policy
from ..atomic_file import atomic_write
from .runner import run_rollouts
from .tasks import TASKS
from .trace import failure_modes, format_failure_modes
from .video import still_path


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--policy", required=True, help="checkpoint: dp_fast .safetensors or original .ckpt")
    parser.add_argument("--task", choices=sorted(TASKS), default=None,
                        help="task (default: the dataset's env; lift without a dataset)")
    parser.add_argument("--dataset", default=None, help="robomimic hdf5 (or its `dp-fast convert` LeRobot copy): "
                                                         "env_args and train initial states")
    parser.add_argument("--episodes", type=int, default=10, help="test episodes (seeded resets)")
    parser.add_argument("--train-episodes", type=int, default=0,
                        help="episodes from the dataset's initial states (needs --dataset)")
    parser.add_argument("--envs", type=int, default=2, help="parallel env worker processes (~0.3-1 GB each)")
    parser.add_argument("--video", default=None, metavar="DIR",
                        help="write mp4 videos of the first episodes here, each with a PNG still beside it")
    parser.add_argument("--n-videos", type=int, default=1, help="videos per split (with --video)")
    parser.add_argument("--trace", default=None, metavar="DIR",
                        help="write every episode's per-step trace here (hand, gripper, object, action; "
                             "JSON lines) and print the failed episodes' failure modes")
    parser.add_argument("--action-steps", type=int, default=None, metavar="N",
                        help="execute the first N actions of each chunk, then call the policy again "
                             "(default: the whole chunk, the policy's n_action_steps)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="episode step limit (default: the task's, 400 for lift / can / square)")
    parser.add_argument("--backend", default=None, help="policy backend (reference, cpu, triton, cuda, auto)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--control-hz", type=float, default=None,
                        help="run against a control rate: count deadline misses (robot holds while late)")
    parser.add_argument("--async", dest="async_inference", action="store_true",
                        help="with --control-hz: compute the next chunk while the current one executes")
    parser.add_argument("--seed", type=int, default=100000, help="first test seed")
    parser.add_argument("--train-start", type=int, default=0, help="first dataset demo for train episodes")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for a worker's reply")
    parser.add_argument("--json", default=None, metavar="OUT.json", help="write all metrics here")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def format_report(m: Dict[str, Any]) -> str:
    lines = [f"{'split':6s} {'episodes':>8s} {'success':>9s} {'rate':>7s} {'95% interval':>15s} {'mean score':>10s} "
             f"{'mean len':>8s}"]
    for split in ("train", "test"):
        if f"{split}/mean_score" not in m:
            continue
        succ = m[f"{split}/successes"]
        lens = m[f"{split}/lengths"]
        lo, hi = m[f"{split}/success_ci95"]
        lines.append(f"{split:6s} {len(succ):8d} {sum(succ):4d}/{len(succ):<4d} {m[f'{split}/success_rate']:7.1%} "
                     f"{f'[{lo:.1%}, {hi:.1%}]':>15s} {m[f'{split}/mean_score']:10.3f} "
                     f"{sum(lens) / max(1, len(lens)):8.1f}")
    if m.get("n_policy_calls"):
        lines.append(f"policy latency over {m['n_policy_calls']} calls (mean batch {m['mean_batch']:.1f}): "
                     f"p50 {m['latency_ms_p50']:.1f} ms  p90 {m['latency_ms_p90']:.1f} ms  "
                     f"p99 {m['latency_ms_p99']:.1f} ms  max {m['latency_ms_max']:.1f} ms")
    if "deadline_misses" in m:
        mode = "async" if m.get("async_inference") else "sync"
        lines.append(f"control {m['control_hz']:g} Hz ({mode}): {m['deadline_misses']} deadline misses in "
                     f"{m['n_chunk_requests']} chunk requests ({m['deadline_miss_rate']:.1%}), "
                     f"{m['deadline_miss_ticks']} hold ticks")
    for e in m.get("errors", []):
        first = str(e["error"]).strip().splitlines()
        lines.append(f"error in {e['split']} episode {e['episode']}: {first[-1] if first else ''}")
    if m.get("worker_restarts"):
        lines.append(f"worker restarts: {m['worker_restarts']}")
    for p in m.get("video_paths", []):
        still = still_path(p)
        lines.append(f"video: {p}" + (f" (still: {still})" if still.is_file() else ""))
    lines.append(f"{m['n_episodes']} episodes, {m['env_steps']} env steps in {m['wall_s']:.1f} s "
                 f"(workers ready after {m['startup_s']:.1f} s)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.train_episodes > 0 and not args.dataset:
        print("--train-episodes needs --dataset", file=sys.stderr)
        return 2
    if args.async_inference and not args.control_hz:
        print("--async needs --control-hz", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    policy = load_policy(args.policy, device=device, backend=args.backend)
    task = args.task or (None if args.dataset else "lift")
    m = run_rollouts(policy, task=task, dataset=args.dataset, n_train=args.train_episodes, n_test=args.episodes,
                     n_envs=args.envs, max_steps=args.max_steps, video_dir=args.video, n_videos=args.n_videos,
                     seed=args.seed, train_start_idx=args.train_start, timeout_s=args.timeout,
                     control_hz=args.control_hz, async_inference=args.async_inference,
                     progress=not args.no_progress, trace_dir=args.trace,
                     action_steps=args.action_steps)
    if args.trace:
        traced = [(path, ok) for split in ("train", "test")
                  for path, ok in zip(m.get(f"{split}/traces", []), m.get(f"{split}/successes", []))]
        m["failure_modes"] = failure_modes(traced)
    print(format_report(m))
    if "failure_modes" in m:
        print(format_failure_modes(m["failure_modes"]))
    if args.json:
        m = dict(m, policy=str(args.policy), device=str(device), backend=getattr(policy, "backend", None))
        with atomic_write(args.json) as tmp:
            tmp.write_text(json.dumps(m, indent=1))
        print(f"metrics: {args.json}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="dp-fast eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
