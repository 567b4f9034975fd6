"""Per-key affine normalizer `y = x * scale + offset` (the original LinearNormalizer's math).

Parameters are stored under `params_dict.<key>.{scale, offset, input_stats.{min,max,mean,std}}`,
the original's state-dict names, so original checkpoints load without renaming.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import nn

STAT_NAMES = ("min", "max", "mean", "std")


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.detach().clone().float(), requires_grad=False)


class LinearNormalizer(nn.Module):
    """A collection of per-key affine maps over the last dimension.

    A key with a (1,) scale (images) applies elementwise; a key with a (D,) scale applies to the
    last dimension of size D.
    """

    def __init__(self):
        super().__init__()
        self.params_dict = nn.ParameterDict()

    # construction ------------------------------------------------------------------
    def set_field(self, key: str, scale: torch.Tensor, offset: torch.Tensor,
                  stats: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        offset = torch.as_tensor(offset, dtype=torch.float32).reshape(-1)
        if scale.shape != offset.shape:
            raise ValueError(f"normalizer '{key}': scale {tuple(scale.shape)} and offset {tuple(offset.shape)} differ")
        if stats is None:
            stats = {n: torch.zeros_like(scale) for n in STAT_NAMES}
        field = nn.ParameterDict({
            "scale": _frozen(scale),
            "offset": _frozen(offset),
            "input_stats": nn.ParameterDict({n: _frozen(torch.as_tensor(stats[n]).reshape(-1)) for n in STAT_NAMES}),
        })
        self.params_dict[key] = field

    def keys(self) -> Iterable[str]:
        return self.params_dict.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.params_dict

    # application -------------------------------------------------------------------
    def _affine(self, key: str):
        if key not in self.params_dict:
            raise KeyError(f"normalizer has no field '{key}'; fields: {list(self.params_dict.keys())}")
        p = self.params_dict[key]
        return p["scale"], p["offset"]

    def normalize_key(self, key: str, x: torch.Tensor) -> torch.Tensor:
        scale, offset = self._affine(key)
        n = scale.shape[0]
        if n != 1 and x.shape[-1] != n:
            raise ValueError(f"normalizer '{key}': expected last dimension {n}, got shape {tuple(x.shape)}")
        shape = x.shape
        y = x.reshape(-1, n) * scale.to(x.dtype) + offset.to(x.dtype)
        return y.reshape(shape)

    def unnormalize_key(self, key: str, y: torch.Tensor) -> torch.Tensor:
        scale, offset = self._affine(key)
        n = scale.shape[0]
        shape = y.shape
        x = (y.reshape(-1, n) - offset.to(y.dtype)) / scale.to(y.dtype)
        return x.reshape(shape)

    def normalize(self, obs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: self.normalize_key(k, v) for k, v in obs.items()}


# fitting (what the original RobomimicReplayImageDataset.get_normalizer builds) ---------------

def stats_of(x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-dimension min/max/mean/std over all leading dimensions of x (..., D)."""
    x = torch.as_tensor(x, dtype=torch.float32)
    x = x.reshape(-1, x.shape[-1])
    return {"min": x.min(0).values, "max": x.max(0).values, "mean": x.mean(0),
            "std": x.std(0, unbiased=False)}


def fit_limits(stats: Mapping[str, torch.Tensor], output_min: float = -1.0, output_max: float = 1.0,
               range_eps: float = 1e-4):
    """Map per-dimension [min, max] to [output_min, output_max]; near-constant dimensions
    (range < range_eps) get scale 1 and are centred: offset = (output_min + output_max) / 2 - min."""
    lo, hi = stats["min"].double(), stats["max"].double()
    rng = hi - lo
    ignore = rng < range_eps
    rng = torch.where(ignore, torch.full_like(rng, output_max - output_min), rng)
    scale = (output_max - output_min) / rng
    offset = output_min - scale * lo
    offset = torch.where(ignore, (output_max + output_min) / 2 - lo, offset)
    return scale.float(), offset.float()


def fit_identity(stats: Mapping[str, torch.Tensor]):
    return torch.ones_like(stats["min"]), torch.zeros_like(stats["min"])


def image_range_field():
    """[0, 1] images -> [-1, 1]: scale 2, offset -1 (stats of U[0,1])."""
    stats = {"min": torch.zeros(1), "max": torch.ones(1), "mean": torch.full((1,), 0.5),
             "std": torch.full((1,), math.sqrt(1 / 12))}
    return torch.full((1,), 2.0), torch.full((1,), -1.0), stats
