"""`dp-fast train --dataset FILE.hdf5 --out DIR [--preset NAME] [key=value ...]`.

Overrides use the original workspace config's dotted names (training.num_epochs=5,
dataloader.batch_size=32, policy.n_layer=4, optimizer.lr=3e-4, ...); values are Python literals.
Running the same command again on the same --out resumes where the previous run stopped.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..data.robomimic import DatasetError
from .config import PRESETS, build_config, known_keys, parse_overrides
from .trainer import Trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="robomimic-format hdf5 file (task.dataset_path)")
    p.add_argument("--out", help="output folder: logs.jsonl, steps.jsonl, curves.png, checkpoints/")
    p.add_argument("--preset", choices=sorted(PRESETS), help="named settings: " + ", ".join(sorted(PRESETS)))
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--list-keys", action="store_true", help="print the accepted override keys and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted config overrides, e.g. training.num_epochs=5 policy.n_layer=4")


def run(args) -> int:

    if args.list_keys:
        print("\n".join(known_keys()))
        return 0
    if not args.out:
        print("dp-fast train: --out DIR is required", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.overrides)
        if args.dataset:
            overrides = {"task.dataset_path": args.dataset, **overrides}
        cfg = build_config(args.preset, overrides)
        if cfg.task.dataset_path is None:
            raise ValueError("no dataset: pass --dataset FILE.hdf5 (or task.dataset_path=...)")
    except (KeyError, ValueError, TypeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"dp-fast train: {msg}", file=sys.stderr)
        return 2


    try:
        trainer = Trainer(cfg, args.out, quiet=args.quiet)
    except (DatasetError, ValueError) as e:  # bad file, settings that do not fit it, or a foreign checkpoint
        print(f"dp-fast train: {e}", file=sys.stderr)
        return 2
    pc = trainer.policy_config
    if not args.quiet:
        if trainer.resumed_from is not None:
            print(f"resuming from {trainer.ckpt.state_path} at epoch {trainer.epoch}, step {trainer.global_step}")
        print(f"dataset {cfg.task.dataset_path}: {len(trainer.dataset)} training windows, "
              f"{len(trainer.val_dataset)} validation windows; obs {list(pc.shape_meta['obs'])}")
        print(f"policy: {pc.n_layer} layers x {pc.n_emb}, vision_width {pc.vision_width}, crop {pc.crop_shape}, "
              f"{pc.scheduler.kind} {pc.inference_steps} inference steps; device {trainer.device}; "
              f"{trainer.steps_per_epoch} batches/epoch")
        if trainer.rollout_skip_reason:
            print(f"rollouts will be skipped ({trainer.rollout_skip_reason})")
    (trainer.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
    result = trainer.run()
    if not args.quiet:
        print(f"done: epoch {result['epoch']}, step {result['global_step']}; "
              f"EMA policy in {trainer.ckpt.policy_path}")
    return 0
