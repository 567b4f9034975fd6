"""`dp-fast curves RUN_DIR [--out FILE.png]`: draw a training run's curves again from its logs.

Reads RUN_DIR/logs.jsonl and, when present, RUN_DIR/steps.jsonl (a run folder of `dp-fast train`, or a
folder holding only its logs.jsonl such as pretrained/lift_cpu) and writes the PNG that the trainer
writes at every epoch end (curves.py), by default to RUN_DIR/curves.png.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .curves import plot_curves
from .log import read_jsonl


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="folder with logs.jsonl (and steps.jsonl)")
    p.add_argument("--out", default=None, help="PNG to write (default RUN_DIR/curves.png)")
    p.add_argument("--title", default=None, help="figure title (default: RUN_DIR)")


def run(args) -> int:
    run_dir = Path(args.run_dir)
    logs = run_dir / "logs.jsonl"
    if not logs.is_file():
        print(f"dp-fast curves: {logs} not found (a `dp-fast train --out` folder holds it)", file=sys.stderr)
        return 2
    steps = run_dir / "steps.jsonl"
    out = Path(args.out) if args.out else run_dir / "curves.png"
    plot_curves(out, read_jsonl(steps) if steps.is_file() else [], read_jsonl(logs),
                title=str(run_dir) if args.title is None else args.title)
    print(f"wrote {out} from {logs}" + (f" and {steps}" if steps.is_file() else ""))
    return 0
