"""Dataset readers (robomimic hdf5, LeRobotDataset v3.0: `formats` tells them apart), the in-memory
replay buffer, padded sequence sampler, batch iterator."""
from .buffer import DatasetError, ReplayBuffer, parse_shape_meta
from .dataset import RobomimicImageDataset
from .robomimic import load_robomimic_hdf5, sorted_demo_names
from .sampler import BatchIterator, SequenceSampler, create_indices, downsample_mask, get_val_mask

__all__ = [
    "RobomimicImageDataset", "DatasetError", "ReplayBuffer", "load_robomimic_hdf5", "parse_shape_meta",
    "sorted_demo_names", "BatchIterator", "SequenceSampler", "create_indices", "downsample_mask", "get_val_mask",
]
