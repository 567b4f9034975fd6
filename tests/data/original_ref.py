"""A literal, per-sample transcription of the original's create_indices / SequenceSampler.sample_sequence /
RobomimicReplayImageDataset.__getitem__ (diffusion_policy/common/sampler.py, dataset/robomimic_replay_image_dataset.py),
on numpy arrays in the original's layout (low-dim float32, images uint8 HWC). Ground truth for the
vectorised sampler, and the per-sample baseline of benchmarks/bench_data.py.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch


def create_indices_ref(episode_ends, sequence_length, episode_mask, pad_before=0, pad_after=0) -> np.ndarray:
    pad_before = min(max(pad_before, 0), sequence_length - 1)
    pad_after = min(max(pad_after, 0), sequence_length - 1)
    indices = list()
    for i in range(len(episode_ends)):
        if not episode_mask[i]:
            continue
        start_idx = 0
        if i > 0:
            start_idx = episode_ends[i - 1]
        end_idx = episode_ends[i]
        episode_length = end_idx - start_idx
        min_start = -pad_before
        max_start = episode_length - sequence_length + pad_after
        for idx in range(min_start, max_start + 1):
            buffer_start_idx = max(idx, 0) + start_idx
            buffer_end_idx = min(idx + sequence_length, episode_length) + start_idx
            start_offset = buffer_start_idx - (idx + start_idx)
            end_offset = (idx + sequence_length + start_idx) - buffer_end_idx
            sample_start_idx = 0 + start_offset
            sample_end_idx = sequence_length - end_offset
            assert start_offset >= 0 and end_offset >= 0
            assert (sample_end_idx - sample_start_idx) == (buffer_end_idx - buffer_start_idx)
            indices.append([buffer_start_idx, buffer_end_idx, sample_start_idx, sample_end_idx])
    return np.array(indices, dtype=np.int64).reshape(-1, 4)


class SequenceSamplerRef:
    def __init__(self, data: Dict[str, np.ndarray], episode_ends, sequence_length, pad_before=0, pad_after=0,
                 key_first_k: Optional[Dict[str, int]] = None, episode_mask=None):
        episode_ends = np.asarray(episode_ends)
        if episode_mask is None:
            episode_mask = np.ones(episode_ends.shape, dtype=bool)
        if np.any(episode_mask):
            self.indices = create_indices_ref(episode_ends, sequence_length, episode_mask, pad_before, pad_after)
        else:
            self.indices = np.zeros((0, 4), dtype=np.int64)
        self.data, self.sequence_length = data, sequence_length
        self.key_first_k = key_first_k or {}

    def __len__(self):
        return len(self.indices)

    def sample_sequence(self, idx) -> Dict[str, np.ndarray]:
        buffer_start_idx, buffer_end_idx, sample_start_idx, sample_end_idx = self.indices[idx]
        result = dict()
        for key, input_arr in self.data.items():
            if key not in self.key_first_k:
                sample = input_arr[buffer_start_idx:buffer_end_idx]
            else:
                n_data = buffer_end_idx - buffer_start_idx
                k_data = min(self.key_first_k[key], n_data)
                # the original fills NaN (0 after the cast for uint8) to catch reads of unloaded frames
                fill = np.nan if np.issubdtype(input_arr.dtype, np.floating) else 0
                sample = np.full((n_data,) + input_arr.shape[1:], fill_value=fill, dtype=input_arr.dtype)
                sample[:k_data] = input_arr[buffer_start_idx:buffer_start_idx + k_data]
            data = sample
            if (sample_start_idx > 0) or (sample_end_idx < self.sequence_length):
                data = np.zeros(shape=(self.sequence_length,) + input_arr.shape[1:], dtype=input_arr.dtype)
                if sample_start_idx > 0:
                    data[:sample_start_idx] = sample[0]
                if sample_end_idx < self.sequence_length:
                    data[sample_end_idx:] = sample[-1]
                data[sample_start_idx:sample_end_idx] = sample
            result[key] = data
        return result


class OriginalStyleDataset(torch.utils.data.Dataset):
    """The original RobomimicReplayImageDataset.__getitem__: one sample built in Python/numpy,
    images moved to (T, C, H, W) and converted to float32 / 255."""

    def __init__(self, data: Dict[str, np.ndarray], episode_ends, rgb_keys: List[str], lowdim_keys: List[str],
                 horizon: int, n_obs_steps: int, n_action_steps: int, episode_mask=None):
        first_k = {k: n_obs_steps for k in rgb_keys + lowdim_keys}
        self.sampler = SequenceSamplerRef(data, episode_ends, horizon, n_obs_steps - 1, n_action_steps - 1,
                                          key_first_k=first_k, episode_mask=episode_mask)
        self.rgb_keys, self.lowdim_keys, self.n_obs_steps = rgb_keys, lowdim_keys, n_obs_steps

    def __len__(self):
        return len(self.sampler)

    def __getitem__(self, idx):
        data = self.sampler.sample_sequence(idx)
        T_slice = slice(self.n_obs_steps)
        obs_dict = dict()
        for key in self.rgb_keys:
            obs_dict[key] = np.moveaxis(data[key][T_slice], -1, 1).astype(np.float32) / 255.
        for key in self.lowdim_keys:
            obs_dict[key] = data[key][T_slice].astype(np.float32)
        return {"obs": {k: torch.from_numpy(v) for k, v in obs_dict.items()},
                "action": torch.from_numpy(data["action"].astype(np.float32))}
