"""RobomimicImageDataset: the original RobomimicReplayImageDataset (delta actions), batched.

Differences from the original, on purpose:
  * `get_batch(indices)` returns a whole batch from vectorised gathers; images stay uint8 (B, To, C, H, W)
    (the policy divides by 255), the original returns float32 / 255 per sample.
  * obs keys return only their first obs_steps frames (n_obs_steps, or the horizon for obs as inpainting),
    in the training and the validation set (the original's validation sampler gathers all frames and then
    slices them: same values).
  * low-dim obs keys whose name ends in neither 'pos', 'qpos' nor 'quat' get a limits normalizer (the
    original raises 'unsupported').
  * optional `max_train_episodes` (the original's downsample_mask, as in its other datasets); as there,
    the validation set is the complement of the training set, so dropped episodes join validation.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from ..normalizer import LinearNormalizer, fit_identity, fit_limits, image_range_field, stats_of
from .buffer import ACTION_KEY, ReplayBuffer, parse_shape_meta
from .formats import load_dataset
from .sampler import IndexLike, SequenceSampler, downsample_mask, get_val_mask

ACTION_NORMS = ("identity", "limits")


class RobomimicImageDataset:
    """Padded (obs, action) windows from a robomimic hdf5 file.

    get_batch(indices) -> {'obs': {key: (B, To, C, H, W) uint8 | (B, To, D) float32},
                           'action': (B, horizon, Da) float32}, on `device`.
    Windows: pad_before = n_obs_steps - 1, pad_after = n_action_steps - 1 (the seed config's values).
    buffer: an already loaded ReplayBuffer to use instead of reading `path`.
    obs_steps: obs frames per window (To above; default n_obs_steps).
    """

    def __init__(self, path, shape_meta: Mapping[str, Any], horizon: int, n_obs_steps: int,
                 n_action_steps: int, val_ratio: float = 0.02, seed: int = 42,
                 max_train_episodes: Optional[int] = None, device="cpu", action_norm: str = "identity",
                 buffer: Optional[ReplayBuffer] = None, obs_steps: Optional[int] = None):
        if action_norm not in ACTION_NORMS:
            raise ValueError(f"action_norm must be one of {ACTION_NORMS}, got {action_norm!r}")
        if not 1 <= n_obs_steps <= horizon:
            raise ValueError(f"need 1 <= n_obs_steps <= horizon, got n_obs_steps={n_obs_steps}, horizon={horizon}")
        if n_action_steps < 1:
            raise ValueError(f"n_action_steps must be >= 1, got {n_action_steps}")
        self.rgb_shapes, self.lowdim_shapes, self.action_dim = parse_shape_meta(shape_meta)
        self.rgb_keys, self.lowdim_keys = list(self.rgb_shapes), list(self.lowdim_shapes)
        self.obs_keys = list(shape_meta["obs"])
        self.shape_meta = copy.deepcopy(dict(shape_meta))
        self.horizon, self.n_obs_steps, self.n_action_steps = int(horizon), int(n_obs_steps), int(n_action_steps)
        self.pad_before, self.pad_after = self.n_obs_steps - 1, self.n_action_steps - 1
        # obs frames gathered per window (the original's dataset n_obs_steps): n_obs_steps, or the horizon
        # for a policy that takes the observations as inpainting (obs_as_cond=False)
        self.obs_steps = self.n_obs_steps if obs_steps is None else int(obs_steps)
        if not self.n_obs_steps <= self.obs_steps <= self.horizon:
            raise ValueError(f"need n_obs_steps <= obs_steps <= horizon, got obs_steps={obs_steps}")
        self.val_ratio, self.seed, self.max_train_episodes = val_ratio, seed, max_train_episodes
        self.action_norm = action_norm

        self.replay_buffer = buffer if buffer is not None else load_dataset(path, shape_meta)
        if torch.device(device) != self.replay_buffer.device:
            self.replay_buffer.to(device)
        n = self.replay_buffer.n_episodes
        self.val_mask = get_val_mask(n, val_ratio, seed)
        self.train_mask = downsample_mask(~self.val_mask, max_train_episodes, seed)
        self.sampler = self._make_sampler(self.train_mask)

    @classmethod
    def from_policy_config(cls, path, cfg, **kwargs) -> "RobomimicImageDataset":
        """Take shape_meta / horizon / n_obs_steps / n_action_steps from a PolicyConfig, and the obs frames
        its loss needs (obs_steps: the horizon when obs_as_cond=False)."""
        return cls(path, cfg.shape_meta, cfg.horizon, cfg.n_obs_steps, cfg.n_action_steps,
                   obs_steps=None if cfg.obs_as_cond else cfg.horizon, **kwargs)

    def _make_sampler(self, mask: np.ndarray) -> SequenceSampler:
        first_k = {k: self.obs_steps for k in self.obs_keys}
        return SequenceSampler(self.replay_buffer.episode_ends, self.horizon, self.pad_before, self.pad_after,
                               episode_mask=mask, key_first_k=first_k, device=self.replay_buffer.device)

    @property
    def device(self) -> torch.device:
        return self.replay_buffer.device

    def to(self, device) -> "RobomimicImageDataset":
        """Move the buffer and index table to `device` (shared with any validation dataset's buffer)."""
        self.replay_buffer.to(device)
        self.sampler.to(device)
        return self

    def get_validation_dataset(self) -> "RobomimicImageDataset":
        """Same buffer, windows of the episodes not in the training set (the original's ~train_mask)."""
        val = copy.copy(self)
        val.train_mask = ~self.train_mask
        val.sampler = self._make_sampler(val.train_mask)
        return val

    def __len__(self) -> int:
        return len(self.sampler)

    def get_batch(self, indices: IndexLike) -> Dict[str, Any]:
        g = self.sampler.gather(self.replay_buffer.data, indices)
        return {"obs": {k: g[k] for k in self.obs_keys}, "action": g[ACTION_KEY]}

    def __getitem__(self, idx: int) -> Dict[str, Any]:
        """One sample (To, ...) / (horizon, Da), for code that wants a map-style dataset."""
        b = self.get_batch([int(idx)])
        return {"obs": {k: v[0] for k, v in b["obs"].items()}, "action": b["action"][0]}

    def get_all_actions(self) -> torch.Tensor:
        """(N, Da) float32: every action of every episode (training and validation), as the original."""
        return self.replay_buffer[ACTION_KEY]

    def get_normalizer(self, action_norm: Optional[str] = None, range_eps: float = 1e-7) -> LinearNormalizer:
        """Fit on all episodes, as the original's get_normalizer:
        action: identity (delta actions) or 'limits'; low-dim keys ending in 'pos' / 'qpos': limits to
        [-1, 1]; 'quat': identity; other low-dim keys: limits (the original raises); rgb: [0,1] -> [-1,1].
        range_eps 1e-7 is the original dataset's value (get_range_normalizer_from_stat); dimensions whose
        range is below it get scale 1 and are centred.
        """
        action_norm = action_norm or self.action_norm
        if action_norm not in ACTION_NORMS:
            raise ValueError(f"action_norm must be one of {ACTION_NORMS}, got {action_norm!r}")
        norm = LinearNormalizer()
        data = self.replay_buffer.data

        def fit(key: str, mode: str):
            stats = {k: v.cpu() for k, v in stats_of(data[key].reshape(data[key].shape[0], -1)).items()}
            scale, offset = fit_limits(stats, range_eps=range_eps) if mode == "limits" else fit_identity(stats)
            norm.set_field(key, scale, offset, stats)

        fit(ACTION_KEY, action_norm)
        for key in self.lowdim_keys:
            fit(key, "identity" if key.endswith("quat") else "limits")
        for key in self.rgb_keys:
            norm.set_field(key, *image_range_field())
        return norm
