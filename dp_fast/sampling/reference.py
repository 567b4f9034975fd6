"""The reference K-step denoising loop: the model's own forward at every step, in plain PyTorch.

This is the ground truth every fast loop is checked against (tests/test_sampling.py) and what the
`reference` backend runs. It follows the original's conditional_sample: start from noise[0], then for
each timestep impose the inpainting condition (obs_as_cond=False), evaluate the model, take one
scheduler step with the step noise the scheduler's noise plan assigns to that iteration.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..models.transformer import TransformerForDiffusion
from ..schedulers import NoiseScheduler
from .noise import draw_noise


class ReferenceSampler:
    """The plain loop over a TransformerForDiffusion (same `sample` signature as the fast samplers)."""

    def __init__(self, model: TransformerForDiffusion):
        self.model = model

    def sample(self, sched: NoiseScheduler, k: int, shape, cond: Optional[torch.Tensor],
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               inpaint: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """The K-step loop. shape: (B, T, D) of the trajectory; cond: (B, To, Do) or None; noise:
        (N, B, T, D) in the noise plan's order, or None to draw it from `generator`; inpaint: (data, mask)
        or None. Returns the final sample (B, T, D)."""
        device = self.model.head.weight.device
        dtype = self.model.head.weight.dtype
        if noise is None:
            noise = draw_noise(sched.num_noise(k), shape, generator, device, dtype)
        timesteps = sched.timesteps(k)
        ints = sched.timestep_list(k)  # the step reads t as a python int (no host read of a tensor: exportable)
        data, mask = inpaint if inpaint is not None else (None, None)
        x = noise[0]
        for i, j in enumerate(sched.noise_plan(k)):
            if mask is not None:
                x = torch.where(mask, data, x)
            eps = self.model(x, timesteps[i], cond)
            x = sched.step(eps, ints[i], x, noise[j] if j >= 0 else None, k)
        if mask is not None:
            x = torch.where(mask, data, x)
        return x
