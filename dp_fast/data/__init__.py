"""Robomimic hdf5 reader, in-memory replay buffer, padded sequence sampler, batch iterator."""
from .dataset import RobomimicImageDataset
from .robomimic import DatasetError, ReplayBuffer, load_robomimic_hdf5, parse_shape_meta, sorted_demo_names
from .sampler import BatchIterator, SequenceSampler, create_indices, downsample_mask, get_val_mask

__all__ = [
    "RobomimicImageDataset", "DatasetError", "ReplayBuffer", "load_robomimic_hdf5", "parse_shape_meta",
    "sorted_demo_names", "BatchIterator", "SequenceSampler", "create_indices", "downsample_mask", "get_val_mask",
]
