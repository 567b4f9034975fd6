"""Padded sequence sampling (the original's SequenceSampler semantics) as vectorised gathers,
the original's episode split helpers, and a resumable batch-index iterator.

A sample is a window of `sequence_length` frames starting at `s` in an episode of length n, for every
s in [-pad_before, n - sequence_length + pad_after]; frames outside the episode repeat the first / last
frame. Instead of slicing and padding per sample, a (n_samples, sequence_length) table of buffer rows,
`clamp(episode_start + s + arange(L), episode_start, episode_end - 1)`, is built once; a batch is one
`index_select` per key.
"""
from __future__ import annotations

import math
from typing import Dict, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch


def create_indices(episode_ends: np.ndarray, sequence_length: int, episode_mask: np.ndarray,
                   pad_before: int = 0, pad_after: int = 0) -> np.ndarray:
    """The original's index table, vectorised: (n_samples, 4) int64 rows of
    (buffer_start_idx, buffer_end_idx, sample_start_idx, sample_end_idx), same order and values."""
    episode_ends = np.asarray(episode_ends, dtype=np.int64)
    episode_mask = np.asarray(episode_mask, dtype=bool)
    if episode_mask.shape != episode_ends.shape:
        raise ValueError(f"episode_mask shape {episode_mask.shape} != episode_ends shape {episode_ends.shape}")
    L = int(sequence_length)
    pad_before = min(max(int(pad_before), 0), L - 1)
    pad_after = min(max(int(pad_after), 0), L - 1)
    starts = np.concatenate([[0], episode_ends]).astype(np.int64)[:-1]
    lengths = episode_ends - starts
    counts = np.maximum(lengths - L + pad_after + pad_before + 1, 0) * episode_mask
    total = int(counts.sum())
    ep = np.repeat(np.arange(len(episode_ends)), counts)                    # episode of each sample
    first = np.cumsum(counts) - counts                                      # first sample of each episode
    idx = np.arange(total, dtype=np.int64) - first[ep] - pad_before         # window start within episode
    ep_start, ep_len = starts[ep], lengths[ep]
    buffer_start = np.maximum(idx, 0) + ep_start
    buffer_end = np.minimum(idx + L, ep_len) + ep_start
    sample_start = buffer_start - (idx + ep_start)
    sample_end = L - ((idx + L + ep_start) - buffer_end)
    return np.stack([buffer_start, buffer_end, sample_start, sample_end], axis=1).astype(np.int64).reshape(-1, 4)


def get_val_mask(n_episodes: int, val_ratio: float, seed: int = 0) -> np.ndarray:
    """The original's split: n_val = min(max(1, round(n * val_ratio)), n - 1) episodes drawn by
    np.random.default_rng(seed).choice(n, n_val, replace=False); none when val_ratio <= 0."""
    val_mask = np.zeros(n_episodes, dtype=bool)
    if val_ratio <= 0:
        return val_mask
    n_val = min(max(1, round(n_episodes * val_ratio)), n_episodes - 1)
    rng = np.random.default_rng(seed=seed)
    val_mask[rng.choice(n_episodes, size=n_val, replace=False)] = True
    return val_mask


def downsample_mask(mask: np.ndarray, max_n: Optional[int], seed: int = 0) -> np.ndarray:
    """The original's subsampling of training episodes: keep max_n of the True entries, chosen by
    np.random.default_rng(seed).choice(n_true, max_n, replace=False)."""
    mask = np.asarray(mask, dtype=bool)
    if max_n is None or mask.sum() <= max_n:
        return mask
    cur = np.nonzero(mask)[0]
    rng = np.random.default_rng(seed=seed)
    keep = cur[rng.choice(len(cur), size=int(max_n), replace=False)]
    out = np.zeros_like(mask)
    out[keep] = True
    return out


IndexLike = Union[torch.Tensor, np.ndarray, Sequence[int], int]


class SequenceSampler:
    """Padded windows over a ReplayBuffer's episodes, fetched as batched gathers.

    frames: (n_samples, sequence_length) int64 buffer rows, on `device`.
    key_first_k: {key: k}: only the first k frames of these keys are gathered (obs need n_obs_steps).
    """

    def __init__(self, episode_ends: np.ndarray, sequence_length: int, pad_before: int = 0,
                 pad_after: int = 0, episode_mask: Optional[np.ndarray] = None,
                 key_first_k: Optional[Mapping[str, int]] = None, device="cpu"):
        if sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {sequence_length}")
        episode_ends = np.asarray(episode_ends, dtype=np.int64)
        if episode_mask is None:
            episode_mask = np.ones(episode_ends.shape, dtype=bool)
        self.indices = create_indices(episode_ends, sequence_length, episode_mask, pad_before, pad_after)
        self.sequence_length = int(sequence_length)
        self.key_first_k = dict(key_first_k or {})
        b0, b1, s0 = (self.indices[:, i:i + 1] for i in range(3))
        virtual_start = b0 - s0                                          # buffer row of window position 0
        rows = np.clip(virtual_start + np.arange(self.sequence_length), b0, b1 - 1)
        self.frames = torch.from_numpy(np.ascontiguousarray(rows)).to(device)  # (n, L)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def device(self) -> torch.device:
        return self.frames.device

    def to(self, device) -> "SequenceSampler":
        self.frames = self.frames.to(device)
        return self

    def as_index_tensor(self, indices: IndexLike) -> torch.Tensor:
        """Indices -> 1-d int64 tensor on the sampler's device; host-side indices are range-checked
        (device tensors are not, to avoid a synchronisation; an out-of-range one fails in the gather)."""
        if isinstance(indices, torch.Tensor):
            idx = indices.reshape(-1).long()
        else:
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64).reshape(-1))
        if idx.device.type == "cpu" and idx.numel():
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= len(self):
                raise IndexError(f"sample index out of range [0, {len(self)}): min {lo}, max {hi}")
        return idx.to(self.device, non_blocking=True)

    def sample_rows(self, indices: IndexLike) -> torch.Tensor:
        """(B, sequence_length) buffer rows of the given samples."""
        return self.frames.index_select(0, self.as_index_tensor(indices))

    def gather(self, data: Mapping[str, torch.Tensor], indices: IndexLike) -> Dict[str, torch.Tensor]:
        """{key: (B, T_key, *frame)} with T_key = key_first_k.get(key, sequence_length)."""
        rows = self.sample_rows(indices)  # (B, L)
        out = {}
        for key, arr in data.items():
            k = min(self.key_first_k.get(key, self.sequence_length), self.sequence_length)
            r = rows[:, :k]
            out[key] = gather_rows(arr, r.reshape(-1).to(arr.device)).view(r.shape + arr.shape[1:])
        return out


def gather_rows(arr: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """arr[rows] along dim 0. Narrow dtypes (uint8 images) are gathered through a wider view of each
    row: CPU index_select copies 1-byte elements one by one (~100x slower than 8-byte ones)."""
    row_bytes = arr[0].numel() * arr.element_size() if arr.shape[0] else 0
    if arr.element_size() < 8 and arr.is_contiguous() and arr.dim() > 1:
        for wide in (torch.int64, torch.int32):
            w = torch.empty((), dtype=wide).element_size()
            if row_bytes % w == 0 and arr.storage_offset() * arr.element_size() % w == 0:
                flat = arr.view(arr.shape[0], -1).view(wide)
                return flat.index_select(0, rows).view(arr.dtype).view((-1,) + arr.shape[1:])
    return arr.index_select(0, rows)


def _epoch_seed(seed: int, epoch: int) -> int:
    # SeedSequence mixes (seed, epoch) so that nearby pairs give unrelated permutations
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1, np.uint64)[0]) >> 1


class BatchIterator:
    """Index batches over [0, dataset_len), one permutation per epoch determined by (seed, epoch).

    Iterating yields the remaining batches of the current epoch (1-d int64 CPU tensors) and moves on to
    the next epoch. The position advances when a batch is handed out, and the epoch rolls over as the
    last batch of an epoch is handed out, so `state_dict()` taken after processing a batch resumes
    with the next batch: a restarted run that loads it sees exactly the batches it would have seen.
    len() is the number of batches per epoch.
    """

    def __init__(self, dataset_len: int, batch_size: int, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False):
        if dataset_len < 0 or batch_size < 1:
            raise ValueError(f"need dataset_len >= 0 and batch_size >= 1, got {dataset_len}, {batch_size}")
        self.dataset_len, self.batch_size = int(dataset_len), int(batch_size)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.epoch = 0
        self.position = 0  # batches of `epoch` already handed out

    def __len__(self) -> int:
        if self.drop_last:
            return self.dataset_len // self.batch_size
        return math.ceil(self.dataset_len / self.batch_size)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.dataset_len)
        g = torch.Generator()
        g.manual_seed(_epoch_seed(self.seed, epoch))
        return torch.randperm(self.dataset_len, generator=g)

    def __iter__(self) -> Iterator[torch.Tensor]:
        n = len(self)
        if n == 0:
            self.epoch += 1
            return
        order = self.epoch_order(self.epoch)
        bs = self.batch_size
        for b in range(self.position, n):
            batch = order[b * bs:(b + 1) * bs]
            self.position = b + 1
            if self.position == n:
                self.epoch, self.position = self.epoch + 1, 0
            yield batch

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "dataset_len": self.dataset_len, "batch_size": self.batch_size,
                "shuffle": int(self.shuffle), "drop_last": int(self.drop_last)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        for name in ("seed", "dataset_len", "batch_size", "shuffle", "drop_last"):
            if name in state and int(state[name]) != int(getattr(self, name)):
                raise ValueError(f"BatchIterator state has {name}={state[name]}, this iterator has "
                                 f"{int(getattr(self, name))}; the batches would differ")
        epoch, position = int(state["epoch"]), int(state["position"])
        if not 0 <= position <= len(self):
            raise ValueError(f"BatchIterator state position {position} outside [0, {len(self)}]")
        if position == len(self):
            epoch, position = epoch + 1, 0
        self.epoch, self.position = epoch, position
