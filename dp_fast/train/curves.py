"""The training curves as a PNG: matplotlib on its Agg canvas (no display, no pyplot state).

    plot_curves("OUT/curves.png", step_rows, epoch_rows)   # rows of OUT/steps.jsonl and OUT/logs.jsonl
    fig = draw_curves(step_rows, epoch_rows)               # the matplotlib Figure itself

Panels, each drawn only from the rows that hold its keys:
  loss            per-batch train loss (thin, light) and its smoothed curve (see `smooth`), per-epoch mean
                  train loss and validation loss (markers); log scale
  action MSE      train_action_mse_error (the EMA policy's sampled actions on a training batch); log scale
  learning rate   per batch (per epoch when there are no batch rows)
  success rate    train / test success rate of the rollouts, in percent; only when rollouts ran
The x axis of every panel is the global step. The file is written atomically (atomic_file).
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np

from ..atomic_file import atomic_write

Rows = Sequence[Dict]


def series(rows: Rows, key: str) -> Tuple[np.ndarray, np.ndarray]:
    """(global steps, values) of the rows that hold a finite number under `key`."""
    pts = [(r["global_step"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)
           and np.isfinite(r[key]) and "global_step" in r]
    if not pts:
        return np.zeros(0), np.zeros(0)
    xs, ys = zip(*pts)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def smooth(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average with weight 1 - 1/span per step, debiased at the start (the first
    value is not pulled towards 0), so the curve starts at the data."""
    out = np.empty_like(values, dtype=np.float64)
    decay = 1.0 - 1.0 / max(1, span)
    acc = norm = 0.0
    for i, v in enumerate(values):
        acc = decay * acc + (1.0 - decay) * v
        norm = decay * norm + (1.0 - decay)
        out[i] = acc / norm
    return out


def _positive(xs: np.ndarray, ys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    keep = ys > 0
    return xs[keep], ys[keep]


def _loss_panel(ax, step_rows: Rows, epoch_rows: Rows) -> bool:
    drawn = False
    xs, ys = _positive(*series(step_rows, "train_loss"))
    if len(xs):
        ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=0.6, label="train (batch)")
        span = max(5, len(ys) // 40)
        ax.plot(xs, smooth(ys, span), color="tab:blue", linewidth=1.6, label=f"train (smoothed, span {span})")
        drawn = True
    for key, label, color, marker in (("train_loss", "train (epoch mean)", "navy", "o"),
                                      ("val_loss", "validation", "tab:red", "s")):
        xs, ys = _positive(*series(epoch_rows, key))
        if len(xs):
            ax.plot(xs, ys, color=color, marker=marker, markersize=3, linewidth=1.0, label=label)
            drawn = True
    ax.set_title("loss")
    ax.set_ylabel("loss")
    if drawn:
        ax.set_yscale("log")
    return drawn


def _mse_panel(ax, epoch_rows: Rows) -> bool:
    xs, ys = _positive(*series(epoch_rows, "train_action_mse_error"))
    ax.set_title("action MSE (EMA policy, training batch)")
    ax.set_ylabel("MSE")
    if not len(xs):
        return False
    ax.plot(xs, ys, color="tab:purple", marker="o", markersize=3, linewidth=1.0, label="train_action_mse_error")
    ax.set_yscale("log")
    return True


def _lr_panel(ax, step_rows: Rows, epoch_rows: Rows) -> bool:
    xs, ys = series(step_rows, "lr")
    label = "per batch"
    if not len(xs):
        xs, ys = series(epoch_rows, "lr")
        label = "at epoch end"
    ax.set_title("learning rate")
    ax.set_ylabel("lr")
    if not len(xs):
        return False
    ax.plot(xs, ys, color="tab:green", linewidth=1.4, label=label)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return True


def _success_keys(epoch_rows: Rows) -> List[Tuple[str, str]]:
    out = []
    for split in ("test", "train"):
        key = f"{split}_success_rate"
        if not len(series(epoch_rows, key)[0]):
            key = f"{split}_mean_score"  # the original's name for the same quantity (sparse reward)
        if len(series(epoch_rows, key)[0]):
            out.append((split, key))
    return out


def _success_panel(ax, epoch_rows: Rows) -> None:
    for (split, key), color in zip(_success_keys(epoch_rows), ("tab:orange", "tab:gray")):
        xs, ys = series(epoch_rows, key)
        ax.plot(xs, 100.0 * ys, color=color, marker="o", markersize=4, linewidth=1.2, label=f"{split} ({key})")
    ax.set_title("rollout success rate")
    ax.set_ylabel("success (%)")
    ax.set_ylim(-3, 103)


def draw_curves(step_rows: Iterable[Dict], epoch_rows: Iterable[Dict], title: str = ""):
    """The matplotlib Figure of the panels (module doc) from the rows of steps.jsonl / logs.jsonl.
    Rows without a global_step, and events (such as "stopped"), are ignored."""
    from matplotlib.figure import Figure  # imported here: only the commands that plot pay for it

    step_rows = [r for r in step_rows if "global_step" in r]
    epoch_rows = [r for r in epoch_rows if "global_step" in r and "event" not in r]
    with_success = bool(_success_keys(epoch_rows))
    n = 4 if with_success else 3
    fig = Figure(figsize=(11, 3.4 * ((n + 1) // 2)), dpi=80, layout="constrained")
    axes = fig.subplots((n + 1) // 2, 2, squeeze=False).ravel()
    drawn = [_loss_panel(axes[0], step_rows, epoch_rows), _mse_panel(axes[1], epoch_rows),
             _lr_panel(axes[2], step_rows, epoch_rows)]
    if with_success:
        _success_panel(axes[3], epoch_rows)
        drawn.append(True)
    else:
        axes[3].remove()
    for ax, ok in zip(axes, drawn):
        ax.set_xlabel("global step")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        if ok:
            ax.legend(loc="best", fontsize=8, frameon=True)
        else:
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center", color="gray")
    if title:
        fig.suptitle(title)
    return fig


def plot_curves(path, step_rows: Iterable[Dict], epoch_rows: Iterable[Dict], title: str = "") -> None:
    """draw_curves, written to `path` as a PNG (atomically)."""
    fig = draw_curves(step_rows, epoch_rows, title)
    with atomic_write(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, format="png")
