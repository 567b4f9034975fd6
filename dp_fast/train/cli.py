"""`dp-fast train --dataset FILE.hdf5|LEROBOT_DIR --out DIR [--preset NAME] [--image-size N] [key=value ...]`.

Overrides use the original workspace config's dotted names (training.num_epochs=5,
dataloader.batch_size=32, policy.n_layer=4, optimizer.lr=3e-4, ...); values are Python literals.
Running the same command again on the same --out resumes where the previous run stopped.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..data.buffer import DatasetError
from .config import PRESETS, build_config, known_keys, parse_overrides
from .trainer import Trainer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", help="robomimic-format hdf5 file or LeRobotDataset v3.0 folder (task.dataset_path)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="resize every image to N x N once, at load (task.image_size; [H, W] there)")
    p.add_argument("--out", help="output folder: logs.jsonl, steps.jsonl, curves.png, checkpoints/ "
                                 "(and wandb/ or tensorboard/ with logging.backend)")
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
        if args.image_size is not None:
            overrides = {"task.image_size": args.image_size, **overrides}
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
    if not trainer.dist.is_main:  # rank 0 alone prints and writes
        trainer.run()
        return 0
    if not args.quiet:
        if trainer.resumed_from is not None:
            print(f"resuming from {trainer.ckpt.state_path} at epoch {trainer.epoch}, step {trainer.global_step}")
        print(f"dataset {cfg.task.dataset_path}: {len(trainer.dataset)} training windows, "
              f"{len(trainer.val_dataset)} validation windows; obs {list(pc.shape_meta['obs'])}")
        print(f"policy: {pc.n_layer} layers x {pc.n_emb}, vision_width {pc.vision_width}, crop {pc.crop_shape}, "
              f"{pc.scheduler.kind} {pc.inference_steps} inference steps; device {trainer.device}; "
              f"{trainer.steps_per_epoch} batches/epoch")
        d = trainer.dist
        print(f"world_size {d.world_size}" + (f" ({d.backend}; global batch {cfg.dataloader.batch_size} x "
                                              f"{d.world_size} = {trainer.batches.batch_size})" if d.enabled else ""))
        if trainer.rollout_skip_reason:
            print(f"rollouts will be skipped ({trainer.rollout_skip_reason})")
    (trainer.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, default=str))
    result = trainer.run()
    if not args.quiet:
        print(summary(trainer, result))
    return 0


def summary(trainer: Trainer, result) -> str:
    """The lines printed when `dp-fast train` ends: where it stopped, the last numbers, the files."""
    out = trainer.out
    started = trainer.resumed_from or 0
    lines = [f"done: epoch {result['epoch']}, step {result['global_step']} ({result['global_step'] - started} steps "
             f"in {result['seconds'] / 60:.1f} min" + (f", resumed at step {started}" if started else "") + ")"
             + (f"; stopped: {result['stopped']} (run the same command again to continue)"
                if result.get("stopped") else "")]
    last = [f"{k} {result[k]:.4g}" for k in ("train_loss", "val_loss", "train_action_mse_error",
                                               "test_mean_score", "train_mean_score")
            if isinstance(result.get(k), float)]
    if last:
        lines.append("last epoch: " + ", ".join(last))
    if trainer.ckpt.topk:
        value, name = trainer.ckpt.topk[0]
        lines.append(f"best {trainer.ckpt.monitor_key} {value:.4g}: {trainer.ckpt.dir / name}")
    lines.append(f"EMA policy: {trainer.ckpt.policy_path}")
    lines.append(f"logs: {out / 'logs.jsonl'}, {out / 'steps.jsonl'}; curves: {out / 'curves.png'}")
    lg, st = trainer.cfg.logging, trainer.tracker_state
    if lg.backend == "tensorboard":
        lines.append(f"TensorBoard: tensorboard --logdir {out / 'tensorboard'}")
    elif lg.backend == "wandb" and st is not None:
        sync = f" (`wandb sync {out / 'wandb'}/offline-run-*` uploads it)" if lg.mode == "offline" else ""
        lines.append(f"wandb: run {st.run_id}, project {lg.project}, mode {lg.mode}{sync}")
    return "\n".join(lines)
