"""The pieces a training run is built from: its device, its optimizer (the original's two AdamW
parameter groups) and the optional torch.compile of its networks."""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..policy import DiffusionPolicy


def resolve_device(name: str) -> torch.device:
    """training.device: "auto" is cuda when torch sees a GPU, else cpu; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def make_optimizer(policy: DiffusionPolicy, cfg) -> torch.optim.AdamW:
    """AdamW over the policy's groups (transformer / obs encoder weight decay); optimizer.impl picks the
    implementation (auto: torch's choice, plain, foreach, fused)."""
    o = cfg.optimizer
    groups = policy.get_optim_groups(transformer_weight_decay=o.transformer_weight_decay,
                                     obs_encoder_weight_decay=o.obs_encoder_weight_decay)
    kw: Dict[str, Any] = {}
    if o.impl == "plain":
        kw["foreach"] = False
    elif o.impl == "foreach":
        kw["foreach"] = True
    elif o.impl == "fused":
        kw["fused"] = True
    return torch.optim.AdamW(groups, lr=o.learning_rate, betas=tuple(o.betas), eps=o.eps, **kw)


def compile_for_training(policy: DiffusionPolicy) -> None:
    """torch.compile the denoiser and each camera's ResNet in place (state-dict keys unchanged); the
    crops stay eager (the dp_fast.ops crop runs outside the compiled networks)."""
    policy.model.compile()
    for net in policy.obs_encoder.obs_nets.values():
        net.compile()
