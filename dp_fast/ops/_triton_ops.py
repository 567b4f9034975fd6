"""The Triton launchers of kernels/ as torch.library custom ops: torch.ops.dp_fast.<op>_triton.

Registered as opaque ops with a fake (meta) implementation, like the C++ ops, so that torch.compile traces
them as single nodes and CUDA-graph capture records them as ordinary kernel launches. (torch.library's
triton_op would let Inductor see inside the kernel, but its fake path runs the launcher, which the CPU
interpreter cannot do on fake tensors; the kernels here are single elementwise launches with nothing to fuse.)
Importing this module does not import triton: `kernels(name)` imports a kernel module when an op first
runs (importing triton takes seconds, and it is an optional dependency of CPU installs).
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor


def kernels(name: str):
    """The Triton kernel module dp_fast.kernels.<name>, imported on first use (see the module docstring)."""
    return importlib.import_module(f"dp_fast.kernels.{name}")


@torch.library.custom_op("dp_fast::ddpm_step_triton", mutates_args=())
def ddpm_step_triton(sample: Tensor, model_output: Tensor, noise: Tensor, table: Tensor, step: Tensor) -> Tensor:
    return kernels("ddpm_step").ddpm_step_triton(sample, model_output, noise, table, step)


@ddpm_step_triton.register_fake
def _(sample, model_output, noise, table, step):
    return torch.empty_like(sample, memory_format=torch.contiguous_format)


@torch.library.custom_op("dp_fast::add_noise_triton", mutates_args=())
def add_noise_triton(x0: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    return kernels("add_noise").add_noise_triton(x0, noise, timesteps, alphas_cumprod)


@add_noise_triton.register_fake
def _(x0, noise, timesteps, alphas_cumprod):
    return torch.empty_like(x0, memory_format=torch.contiguous_format)


@torch.library.custom_op("dp_fast::random_crop_triton", mutates_args=())
def random_crop_triton(images: Tensor, offsets: Tensor, h: int, w: int, normalize: bool) -> Tensor:
    return kernels("random_crop").random_crop_triton(images, offsets, h, w, normalize)


@random_crop_triton.register_fake
def _(images, offsets, h, w, normalize):
    return images.new_empty((images.shape[0], images.shape[1], h, w), dtype=torch.float32)
