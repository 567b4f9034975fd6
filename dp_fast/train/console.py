"""What a training run shows on the console: one progress bar for the whole run, its postfix the latest
epoch, loss, learning rate and evaluation numbers, and one line per epoch that evaluated something."""
from __future__ import annotations

from typing import Any, Dict, Optional

from tqdm import tqdm

# quantities of an epoch row shown in the bar's postfix and in the epoch's console line
SHOWN = (("val_loss", "val"), ("train_action_mse_error", "mse"), ("test_success_rate", "test_success"),
         ("train_success_rate", "train_success"))


class TrainConsole:
    """The bar exists between open() and close(); lines printed meanwhile leave it intact. quiet: nothing."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._bar: Optional[tqdm] = None
        self._postfix: Dict[str, str] = {}

    def open(self, total: int, initial: int, interval_s: float, disable: bool = False) -> None:
        self._bar = tqdm(total=total, initial=min(initial, total), desc="train", unit="step",
                         mininterval=interval_s, dynamic_ncols=True, disable=self.quiet or disable)
        self._postfix = {}

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def update(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def show(self, **values: str) -> None:
        """Update the bar's postfix (drawn at the bar's next refresh)."""
        self._postfix.update(values)
        if self._bar is not None:
            self._bar.set_postfix(self._postfix, refresh=False)

    def say(self, line: str) -> None:
        """A console line that leaves the progress bar intact."""
        if not self.quiet:
            (self._bar.write if self._bar is not None else print)(line)

    def report_epoch(self, row: Dict[str, Any]) -> None:
        """The postfix gets the epoch's evaluation numbers; an epoch that evaluated anything (validation,
        action MSE, rollouts, a top-k file, a failed rollout) also gets one console line."""
        shown = {short: f"{row[k]:.4g}" for k, short in SHOWN if isinstance(row.get(k), float)}
        if isinstance(row.get("train_loss"), float):
            self.show(loss=f"{row['train_loss']:.4f}", **shown)
        else:
            self.show(**shown)
        notes = [f"{k} {row[k]}" for k in ("topk_saved", "rollout_error") if k in row]
        if shown or notes:
            head = f"epoch {row['epoch']} (step {row['global_step']})"
            if row.get("train_loss") is not None:
                head += f": train_loss {row['train_loss']:.4g}"
            values = [f"{k} {row[k]:.4g}" for k, _ in SHOWN if isinstance(row.get(k), float)]
            self.say(", ".join([head] + values + notes))
