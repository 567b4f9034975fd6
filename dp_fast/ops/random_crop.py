"""random_crop: crop a batch of images at per-image offsets, fused with uint8 -> float and [-1, 1] scaling.

images (N, C, H, W) uint8 / float32 / bfloat16 / float16 -> (N, C, h, w) float32 with, in float32,
    v = images[n, c, top_n + i, left_n + j];  v = v / 255 (uint8 only);  v = 2 v - 1 (normalize=True)
i.e. uint8 [0, 255] or float [0, 1] pixels go to [-1, 1], the policy's image-range normalizer (scale 2,
offset -1). normalize=False is a plain crop (uint8 still scaled to [0, 1]): the observation encoder crops
already-normalized float images this way.
Every backend computes the same float32 operations, so crops are bit-exact across backends.

Offsets: `random_crop_offsets` draws them on the device, uniform over all (H - h + 1) x (W - w + 1)
valid positions. The original Diffusion Policy drew `(M * rand).long()` with M = H - h, which never
yields M: the last row/column offset (8 for 84 -> 76) is never used. `mode="original"` reproduces that
(same draws, same order). `center_crop_offsets` / `center_crop` are the eval crop.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch

from . import _triton_ops  # noqa: F401  (registers torch.ops.dp_fast.<op>_triton)
from ._common import FLOAT_DTYPES, check_contiguous, check_tensor, device_guard, resolve

OP = "random_crop"
CROP_MODES = ("uniform", "original")
IMAGE_DTYPES = (torch.uint8,) + FLOAT_DTYPES
Size = Union[int, Sequence[int]]


def _crop_size(size: Size, image_hw: Sequence[int]) -> Tuple[int, int]:
    if isinstance(size, int) and not isinstance(size, bool):
        h = w = size
    elif isinstance(size, (tuple, list, torch.Size)) and len(size) == 2 and all(
            isinstance(s, int) and not isinstance(s, bool) for s in size):
        h, w = size
    else:
        raise TypeError(f"{OP}: `size` must be an int or a pair of ints (h, w), got {size!r}")
    H, W = image_hw
    if not (1 <= h <= H and 1 <= w <= W):
        raise ValueError(f"{OP}: crop size ({h}, {w}) must be at least 1 and at most the image size ({H}, {W})")
    return h, w


def random_crop_ref(images: torch.Tensor, offsets: torch.Tensor, size: Size, normalize: bool = True) -> torch.Tensor:
    """images: (N, C, H, W); offsets: (N, 2) int64 [top, left]; size: (h, w) -> (N, C, h, w) float32."""
    n, c, H, W = images.shape
    h, w = _crop_size(size, (H, W))
    dev = images.device
    rows = offsets[:, 0:1] + torch.arange(h, device=dev)  # (N, h)
    cols = offsets[:, 1:2] + torch.arange(w, device=dev)  # (N, w)
    crop = images[torch.arange(n, device=dev).view(n, 1, 1, 1), torch.arange(c, device=dev).view(1, c, 1, 1),
                  rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]  # (N, C, h, w)
    if images.dtype == torch.uint8:
        # = the correctly rounded float32 v / 255 (a float64 quotient rounded once to float32 is exact:
        # 53 >= 2 * 24 + 2 bits). Not `float32 / 255.0`: on CUDA torch multiplies by the reciprocal of a
        # scalar divisor, which is off by one ulp for some v.
        out = (crop.to(torch.float64) / 255.0).to(torch.float32)
    else:
        out = crop.to(torch.float32)
    if normalize:
        out = out * 2.0 - 1.0
    return out


def _validate(images, offsets) -> None:
    check_tensor(OP, "images", images, IMAGE_DTYPES, (None, None, None, None))
    check_tensor(OP, "offsets", offsets, (torch.int64,), (images.shape[0], 2), images.device, "images")


def random_crop(images: torch.Tensor, offsets: torch.Tensor, size: Size, *, normalize: bool = True,
                backend: Optional[str] = None) -> torch.Tensor:
    """Crop image n at offsets[n] = [top, left] on `backend` (None: $DP_FAST_BACKEND, then "auto").

    images: (N, C, H, W) uint8 / float32 / bfloat16 / float16; offsets: (N, 2) int64 on the same device;
    size: int or (h, w). Returns (N, C, h, w) float32. An offset outside [0, H - h] x [0, W - w] raises
    on CPU and yields NaN for that image on CUDA (checking it there would sync).
    """
    _validate(images, offsets)
    h, w = _crop_size(size, images.shape[2:])
    name = resolve(OP, backend, images.device)
    if name == "reference":
        return random_crop_ref(images, offsets, (h, w), normalize)
    check_contiguous(OP, name, images=images, offsets=offsets)
    if name == "triton":
        with device_guard(images.device):
            return torch.ops.dp_fast.random_crop_triton(images, offsets, h, w, normalize)
    return torch.ops.dp_fast.random_crop(images, offsets, h, w, bool(normalize))


def random_crop_offsets(n: int, image_hw: Sequence[int], size: Size, *, mode: str = "uniform",
                        generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """(N, 2) int64 [top, left] drawn on `device` (no host sync; CUDA-graph safe with the default generator).

    mode "uniform": every valid offset 0..H-h and 0..W-w equally likely (torch.randint, top then left).
    mode "original": the original code's `(M * rand).long()` with M = H - h (resp. W - w), drawn as (N, 1)
    top then left like the original, which never yields M: offsets 0..M-1 only (docs/numerics.md, "Crop").
    """
    H, W = image_hw
    h, w = _crop_size(size, (H, W))
    mh, mw = H - h, W - w
    if mode == "original":
        top = (mh * torch.rand(n, 1, generator=generator, device=device)).long()
        left = (mw * torch.rand(n, 1, generator=generator, device=device)).long()
    elif mode == "uniform":
        top = torch.randint(0, mh + 1, (n, 1), generator=generator, device=device)
        left = torch.randint(0, mw + 1, (n, 1), generator=generator, device=device)
    else:
        raise ValueError(f"{OP}: crop mode must be one of {list(CROP_MODES)}, got {mode!r}")
    return torch.cat([top, left], dim=1)


def center_crop_offsets(n: int, image_hw: Sequence[int], size: Size, device=None) -> torch.Tensor:
    """(N, 2) int64, every row the centre crop's [top, left] = round((H - h) / 2), round((W - w) / 2)
    (Python rounding, as torchvision's center_crop): rows/cols 4..79 for 84 -> 76."""
    H, W = image_hw
    h, w = _crop_size(size, (H, W))
    top, left = int(round((H - h) / 2.0)), int(round((W - w) / 2.0))
    return torch.tensor([top, left], dtype=torch.int64, device=device).expand(n, 2).contiguous()


def center_crop(images: torch.Tensor, size: Size, *, normalize: bool = True,
                backend: Optional[str] = None) -> torch.Tensor:
    """The eval crop: random_crop at the centre offsets. images: (N, C, H, W) -> (N, C, h, w) float32."""
    check_tensor(OP, "images", images, IMAGE_DTYPES, (None, None, None, None))
    offsets = center_crop_offsets(images.shape[0], images.shape[2:], size, device=images.device)
    return random_crop(images, offsets, size, normalize=normalize, backend=backend)
