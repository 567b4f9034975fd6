"""Triton kernel of dp_fast.ops.random_crop: per-image crop fused with uint8 -> float and [-1, 1] scaling.

images (N, C, H, W) uint8 / float32 / bfloat16 / float16, offsets (N, 2) int64 [top, left] ->
out (N, C, h, w) float32 with, in float32,
    v = images[n, c, top + i, left + j];  v = v / 255 (uint8 only, IEEE division);  v = 2 v - 1 (normalize)
(2 v is exact, so a fused multiply-add gives the same bits: the crop is bit-exact across backends).
Offsets are read on the device (no host sync); an image whose offset puts the crop outside it gets NaN.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Rows per program: about 1024 output elements per program for the usual 76-wide crop.
ELEMS_PER_PROGRAM = 1024


@triton.jit
def _random_crop_kernel(img_ptr, off_ptr, out_ptr, C, H, W, h, w,
                        IS_UINT8: tl.constexpr, NORMALIZE: tl.constexpr,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    nc = tl.program_id(0).to(tl.int64)  # image-channel plane n * C + c
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]  # (BLOCK_H, 1)
    cols = tl.arange(0, BLOCK_W)[None, :]  # (1, BLOCK_W)
    n = nc // C
    top = tl.load(off_ptr + 2 * n)
    left = tl.load(off_ptr + 2 * n + 1)
    valid = (top >= 0) & (top <= H - h) & (left >= 0) & (left <= W - w)
    inside = (rows < h) & (cols < w)
    src = img_ptr + nc * H * W + (top + rows) * W + (left + cols)
    v = tl.load(src, mask=inside & valid, other=0).to(tl.float32)
    if IS_UINT8:
        v = tl.div_rn(v, 255.0)  # correctly rounded, like torch's float division
    if NORMALIZE:
        v = v * 2.0 - 1.0
    v = tl.where(valid, v, float("nan"))
    tl.store(out_ptr + nc * h * w + rows * w + cols, v, mask=inside)


def _blocks(w: int):
    block_w = triton.next_power_of_2(w)
    return max(1, ELEMS_PER_PROGRAM // block_w), block_w


def random_crop_triton(images: torch.Tensor, offsets: torch.Tensor, h: int, w: int,
                       normalize: bool = True) -> torch.Tensor:
    """images: (N, C, H, W) contiguous; offsets: (N, 2) int64 contiguous -> (N, C, h, w) float32.
    Inputs are validated by dp_fast.ops.random_crop."""
    n, c, hh, ww = images.shape
    out = torch.empty((n, c, h, w), dtype=torch.float32, device=images.device)
    if out.numel():
        block_h, block_w = _blocks(w)
        grid = (n * c, triton.cdiv(h, block_h))
        _random_crop_kernel[grid](images, offsets, out, c, hh, ww, h, w, IS_UINT8=images.dtype == torch.uint8,
                                  NORMALIZE=bool(normalize), BLOCK_H=block_h, BLOCK_W=block_w)
    return out


def _spec(ty: str, normalize: bool, w: int):
    block_h, block_w = _blocks(w)
    return {
        "fn": _random_crop_kernel,
        "signature": {"img_ptr": f"*{ty}", "off_ptr": "*i64", "out_ptr": "*fp32",
                      "C": "i32", "H": "i32", "W": "i32", "h": "i32", "w": "i32"},
        "constexprs": {"IS_UINT8": ty == "u8", "NORMALIZE": normalize, "BLOCK_H": block_h, "BLOCK_W": block_w},
        "divisible_by_16": ["img_ptr", "off_ptr", "out_ptr"],
        "label": f"{ty} normalize={normalize} w={w}",
    }


# The seed crop (84 -> 76) for every input dtype, plus a small crop and the un-normalized variant.
AOT_SPECS = [_spec(ty, True, 76) for ty in ("u8", "fp32", "bf16", "fp16")] + [
    _spec("u8", False, 76), _spec("u8", True, 13)]
