"""Hot ops, one module each: `<op>_ref` (pure PyTorch, the ground truth) and `<op>(..., backend=None)`.

The dispatcher validates its inputs (dtype, device, shape, layout) once for every backend, resolves the
backend with dp_fast.backends.resolve_op_backend (a named backend never falls back) and runs
the reference, the Triton kernel (kernels/<op>.py) or the C++ CPU / CUDA op (torch.ops.dp_fast.<op>).
"""
from .add_noise import add_noise, add_noise_ref
from .ddpm_step import ddpm_step, ddpm_step_ref
from .random_crop import center_crop, center_crop_offsets, random_crop, random_crop_offsets, random_crop_ref

__all__ = ["add_noise", "add_noise_ref", "ddpm_step", "ddpm_step_ref", "random_crop", "random_crop_ref",
           "random_crop_offsets", "center_crop", "center_crop_offsets"]
