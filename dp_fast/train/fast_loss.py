"""Training loss through dp_fast.ops: crop straight from the uint8 images (fused with the [0,1] -> [-1,1]
scaling) and the fused add_noise kernel, on the backend that `backend=` resolves to.

Same function as DiffusionPolicy.compute_loss for the standard configuration (obs as condition,
epsilon / sample prediction, full-horizon trajectories, image-range normalizer on every camera):
the same random draws in the same order (crop offsets per camera in shape_meta order, top then left;
noise; timesteps), so with the same RNG state the loss equals compute_loss's within float rounding.
compute_loss normalizes whole images and then crops; here only the crop window is converted.
`supports(policy)` says whether a policy's configuration is covered; the trainer falls back otherwise.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch
import torch.nn.functional as F


def ops_available() -> Optional[str]:
    """None when dp_fast.ops (random_crop, add_noise) imports, else the reason it does not."""
    try:
        from ..ops import add_noise, random_crop  # noqa: F401
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def supports(policy) -> Optional[str]:
    """None if fast_compute_loss computes this policy's loss, else why not."""
    c = policy.config
    if not c.obs_as_cond or c.pred_action_steps_only:
        return "only obs_as_cond=True, pred_action_steps_only=False"
    for key in c.rgb_keys:
        p = policy.normalizer.params_dict[key]
        if p["scale"].numel() != 1 or float(p["scale"]) != 2.0 or float(p["offset"]) != -1.0:
            return f"camera '{key}' has a normalizer other than the image range (scale 2, offset -1)"
    return ops_available()


def fast_compute_loss(policy, batch: Mapping, backend: Optional[str] = None) -> torch.Tensor:
    """batch: {"obs": {key: (B, To', ...)}, "action": (B, T, Da)} -> scalar loss (see module doc)."""
    from ..ops import add_noise, center_crop_offsets, random_crop, random_crop_offsets

    c = policy.config
    act = batch["action"].to(policy.device, policy.dtype)
    bsz, to = act.shape[0], c.n_obs_steps
    nact = policy.normalizer.normalize_key("action", act)
    enc = policy.obs_encoder
    feats = []
    for key, meta in c.shape_meta["obs"].items():
        x = batch["obs"][key][:, :to].to(policy.device)
        if meta.get("type", "low_dim") == "rgb":
            imgs = x.reshape(bsz * to, *x.shape[2:]).contiguous()  # (N, C, H, W) uint8
            hw = tuple(imgs.shape[2:])
            size = tuple(c.crop_shape) if c.crop_shape is not None else hw
            if not enc.training:
                off = center_crop_offsets(imgs.shape[0], hw, size, device=imgs.device)
            else:
                off = random_crop_offsets(imgs.shape[0], hw, size, device=imgs.device,
                                          original_off_by_one=c.crop_mode == "original")
            img = random_crop(imgs, off, size, normalize=True, backend=backend).to(policy.dtype)
            feats.append(F.relu(enc.obs_nets[key](img)))
        else:
            x = x.to(policy.dtype).reshape(bsz * to, -1)
            feats.append(policy.normalizer.normalize_key(key, x))
    cond = torch.cat(feats, dim=-1).reshape(bsz, to, -1)
    noise = torch.randn(nact.shape, device=nact.device, dtype=nact.dtype)
    timesteps = torch.randint(0, c.scheduler.num_train_timesteps, (bsz,), device=nact.device)
    abar = policy.noise_scheduler.to(nact.device).alphas_cumprod
    noisy = add_noise(nact.contiguous(), noise, timesteps, abar, backend=backend)
    pred = policy.model(noisy, timesteps, cond)
    target = noise if c.scheduler.prediction_type == "epsilon" else nact
    return F.mse_loss(pred, target, reduction="none").reshape(bsz, -1).mean(1).mean()
