"""Drawing the noise of one sampling call, in the order the original draws it.

The original draws the initial sample, then one tensor per iteration that uses step noise
(NoiseScheduler.noise_plan). Drawing them all up front with one torch.randn per tensor gives the same
values from the same generator, as long as nothing else draws from it in between (true in eval mode:
no dropout). Every loop then reads noise[noise_plan[i]].
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch


def draw_noise(n: int, shape: Sequence[int], generator: Optional[torch.Generator], device, dtype) -> torch.Tensor:
    """(n, *shape): n draws of torch.randn(shape) from `generator` (the global RNG when None), in order."""
    return torch.stack([torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
                        for _ in range(n)])
