"""Learning-rate schedules stepped per optimizer step, with diffusers' `get_scheduler` semantics.

factor(step) multiplies the base lr of every param group:
  cosine:               step / warmup during warm-up, then 0.5 * (1 + cos(pi * progress)),
                        progress = (step - warmup) / (total - warmup), floored at 0
  linear:               warm-up, then (total - step) / (total - warmup), floored at 0
  constant_with_warmup: warm-up, then 1
  constant:             1
"""
from __future__ import annotations

import math
from typing import Dict, List


def lr_factor(name: str, step: int, warmup_steps: int, total_steps: int) -> float:
    if name == "constant":
        return 1.0
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    if name == "constant_with_warmup":
        return 1.0
    if name == "linear":
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))
    if name == "cosine":
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    raise ValueError(f"unknown lr schedule {name!r} (cosine, linear, constant, constant_with_warmup)")


class LRSchedule:
    """Sets `lr = base_lr * factor(step)` on the optimizer's groups; step() after each optimizer step.

    Like torch's LambdaLR (which diffusers uses): the lr of step 0 is applied at construction.
    """

    def __init__(self, optimizer, name: str, warmup_steps: int, total_steps: int):
        self.optimizer, self.name = optimizer, name
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.base_lrs: List[float] = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        for g, lr in zip(optimizer.param_groups, self.base_lrs):
            g["initial_lr"] = lr
        self.last_step = 0
        self._apply()

    def factor(self, step: int) -> float:
        return lr_factor(self.name, step, self.warmup_steps, self.total_steps)

    def _apply(self) -> None:
        f = self.factor(self.last_step)
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = lr * f

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> List[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict:
        return {"name": self.name, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "last_step": self.last_step, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: Dict) -> None:
        self.name, self.warmup_steps = state["name"], int(state["warmup_steps"])
        self.total_steps, self.last_step = int(state["total_steps"]), int(state["last_step"])
        self.base_lrs = list(state["base_lrs"])
        self._apply()
