"""EMA of the policy weights: the original diffusion_policy EMAModel's schedule and update.

decay(n) = 0 if s <= 0 else clamp(1 - (1 + s / inv_gamma) ** -power, min_value, max_value),
s = max(0, n - update_after_step - 1), n = the number of EMA updates done before this one (so the first
two updates copy the weights). Parameters with requires_grad are averaged
`ema = decay * ema + (1 - decay) * p`; parameters without grad (the normalizer) and buffers are copied.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn


def ema_decay(optimization_step: int, update_after_step: int = 0, inv_gamma: float = 1.0, power: float = 0.75,
              min_value: float = 0.0, max_value: float = 0.9999) -> float:
    step = max(0, optimization_step - update_after_step - 1)
    if step <= 0:
        return 0.0
    value = 1 - (1 + step / inv_gamma) ** -power
    return max(min_value, min(value, max_value))


class EMAModel:
    def __init__(self, model: nn.Module, update_after_step: int = 0, inv_gamma: float = 1.0,
                 power: float = 0.75, min_value: float = 0.0, max_value: float = 0.9999):
        self.averaged_model = copy.deepcopy(model).eval()
        self.averaged_model.requires_grad_(False)
        self.update_after_step, self.inv_gamma, self.power = update_after_step, inv_gamma, power
        self.min_value, self.max_value = min_value, max_value
        self.optimization_step = 0
        self.decay = 0.0

    def get_decay(self, optimization_step: int) -> float:
        return ema_decay(optimization_step, self.update_after_step, self.inv_gamma, self.power,
                         self.min_value, self.max_value)

    def _pairs(self, model: nn.Module):
        """(averaged, source) tensor lists for `model`, built once per model: the parameters to average
        and the tensors to copy (parameters without grad, e.g. the normalizer, and buffers)."""
        if getattr(self, "_pairs_for", None) is not model:
            avg, new, copy_dst, copy_src = [], [], [], []
            ema_params = dict(self.averaged_model.named_parameters())
            for name, p in model.named_parameters():
                e = ema_params[name]
                (avg if p.requires_grad else copy_dst).append(e)
                (new if p.requires_grad else copy_src).append(p)
            ema_buffers = dict(self.averaged_model.named_buffers())
            for name, b in model.named_buffers():
                if name in ema_buffers:
                    copy_dst.append(ema_buffers[name])
                    copy_src.append(b)
            self._pairs_for, self._pair_lists = model, (avg, new, copy_dst, copy_src)
        return self._pair_lists

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.decay = self.get_decay(self.optimization_step)
        avg, new, copy_dst, copy_src = self._pairs(model)
        if avg:
            # the original's two in-place ops per tensor (mul_, add_ with alpha), fused over the list
            new = [p if p.dtype == e.dtype else p.to(e.dtype) for p, e in zip(new, avg)]
            torch._foreach_mul_(avg, self.decay)
            torch._foreach_add_(avg, new, alpha=1 - self.decay)
        for d, s in zip(copy_dst, copy_src):
            d.copy_(s)
        self.optimization_step += 1

    def state_dict(self) -> Dict:
        return {"model": self.averaged_model.state_dict(), "optimization_step": self.optimization_step,
                "decay": self.decay}

    def load_state_dict(self, state: Dict) -> None:
        self.averaged_model.load_state_dict(state["model"])
        self.optimization_step = int(state["optimization_step"])
        self.decay = float(state["decay"])
