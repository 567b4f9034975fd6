"""Observation encoder: per-camera ResNet18 (GroupNorm) + SpatialSoftmax, low-dim passthrough.

Module and parameter names follow the original robomimic/diffusion_policy state dict
(`obs_nets.<key>.backbone.nets.{0..7}`, `.pool.nets`, `.nets.3`), so original checkpoints load
after dropping their aliases (see dp_fast.original_format.map_original_state_dict).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import center_crop_offsets, random_crop, random_crop_offsets


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(c // 16, c)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _gn(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _gn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + idt)


class ResNet18Conv(nn.Module):
    """torchvision resnet18 children without avgpool/fc, BatchNorm -> GroupNorm(C // 16, C).

    x: (N, C, H, W) -> (N, 8 * width, ceil(H/32), ceil(W/32)); (N, 512, 3, 3) for 76x76 at width 64
    (the original). Other widths scale every stage's channels.
    """

    def __init__(self, in_channels: int = 3, width: int = 64):
        super().__init__()
        layers = [nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), _gn(width), nn.ReLU(inplace=True),
                  nn.MaxPool2d(3, 2, 1)]
        cin = width
        self.out_channels = 8 * width
        for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.nets = nn.Sequential(*layers)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.nets(x)


class SpatialSoftmax(nn.Module):
    """1x1 conv to `num_kp` maps, softmax over positions, expected (x, y) per keypoint.

    x: (N, C, H, W) -> (N, num_kp, 2) with positions from linspace(-1, 1) (x along W, y along H).
    """

    def __init__(self, in_shape: Sequence[int], num_kp: int = 32, temperature: float = 1.0):
        super().__init__()
        c, h, w = in_shape
        self.nets = nn.Conv2d(c, num_kp, kernel_size=1)
        self.num_kp = num_kp
        gx, gy = torch.meshgrid(torch.linspace(-1.0, 1.0, w), torch.linspace(-1.0, 1.0, h), indexing="xy")
        self.register_buffer("pos_x", gx.reshape(1, h * w).float())
        self.register_buffer("pos_y", gy.reshape(1, h * w).float())
        self.register_buffer("temperature", torch.full((1,), float(temperature)))

    def forward(self, x):
        f = self.nets(x)
        f = f.reshape(-1, f.shape[-2] * f.shape[-1])  # (N * K, HW)
        att = F.softmax(f / self.temperature, dim=-1)
        ex = (self.pos_x * att).sum(1, keepdim=True)
        ey = (self.pos_y * att).sum(1, keepdim=True)
        return torch.cat([ex, ey], 1).reshape(-1, self.num_kp, 2)


class VisualCore(nn.Module):
    """backbone -> SpatialSoftmax -> flatten -> Linear(2 * num_kp, feature_dim).

    The Linear sits in `nets["3"]` to keep the original's `nets.3.*` parameter names.
    """

    def __init__(self, in_shape: Sequence[int], feature_dim: int = 64, num_kp: int = 32, width: int = 64):
        super().__init__()
        c, h, w = in_shape
        self.backbone = ResNet18Conv(c, width)
        fh, fw = _resnet_out_hw(h, w)
        self.pool = SpatialSoftmax((self.backbone.out_channels, fh, fw), num_kp)
        self.nets = nn.ModuleDict({"3": nn.Linear(2 * num_kp, feature_dim)})

    def forward(self, x):
        kp = self.pool(self.backbone(x))
        return self.nets["3"](kp.flatten(1))


def _resnet_out_hw(h: int, w: int) -> Tuple[int, int]:
    def down(n, k, s, p):
        return (n + 2 * p - k) // s + 1
    h, w = down(h, 7, 2, 3), down(w, 7, 2, 3)   # stem conv
    h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)   # max pool
    for _ in range(3):                          # stages 2..4 stride 2
        h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
    return h, w


class ObsEncoder(nn.Module):
    """Multi-camera encoder for any shape_meta.

    obs: {key: (N, *shape)} normalized (images in [-1, 1], CHW) -> (N, D) with, in shape_meta
    order, ReLU(VisualCore(crop(image))) (64 each) for rgb keys and the values for low-dim keys.
    Crops (dp_fast.ops.random_crop): in train mode random unless `crop_offsets[key]` ((N, 2) int64
    [top, left]) is given, drawn with `crop_mode`; in eval mode the centre crop, or random as in train
    mode when eval_fixed_crop=False (what the original's robomimic crop randomizer does then).
    """

    def __init__(self, shape_meta: Dict, crop_shape: Optional[Sequence[int]] = (76, 76),
                 crop_mode: str = "uniform", feature_dim: int = 64, vision_width: int = 64,
                 eval_fixed_crop: bool = True):
        super().__init__()
        self.obs_meta = {k: dict(v) for k, v in shape_meta["obs"].items()}
        self.crop_shape = tuple(crop_shape) if crop_shape is not None else None
        self.crop_mode = crop_mode
        self.eval_fixed_crop = eval_fixed_crop
        self._centre: Dict[tuple, torch.Tensor] = {}
        self.obs_nets = nn.ModuleDict()
        self.feature_dims: Dict[str, int] = {}
        for key, meta in self.obs_meta.items():
            shape = list(meta["shape"])
            if meta.get("type", "low_dim") == "rgb":
                c, h, w = shape
                if self.crop_shape is not None:
                    if self.crop_shape[0] > h or self.crop_shape[1] > w:
                        raise ValueError(f"crop_shape {self.crop_shape} larger than image '{key}' {shape}")
                    h, w = self.crop_shape
                self.obs_nets[key] = VisualCore((c, h, w), feature_dim, width=vision_width)
                self.feature_dims[key] = feature_dim
            else:
                self.feature_dims[key] = int(torch.Size(shape).numel())
        self.output_dim = sum(self.feature_dims.values())

    def crop(self, x: torch.Tensor, offsets: Optional[torch.Tensor] = None,
             generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> torch.Tensor:
        """x: (N, C, H, W) normalized images -> (N, C, *crop_shape) float32 (see the class docstring)."""
        if self.crop_shape is None:
            return x
        hw = tuple(x.shape[2:])
        if offsets is None:
            if self.draws_crops():
                offsets = self.random_offsets(x.shape[0], hw, generator, x.device)
            else:
                offsets = self._centre_offsets(x.shape[0], hw, x.device)
        return random_crop(x.contiguous(), offsets, self.crop_shape, normalize=False, backend=backend).to(x.dtype)

    def draws_crops(self) -> bool:
        """Whether crop() draws random offsets (train mode, or eval with eval_fixed_crop=False)."""
        return self.crop_shape is not None and (self.training or not self.eval_fixed_crop)

    def random_offsets(self, n: int, hw, generator: Optional[torch.Generator], device) -> torch.Tensor:
        """(n, 2) random [top, left] for images of size hw, drawn with crop_mode."""
        return random_crop_offsets(n, hw, self.crop_shape, mode=self.crop_mode, generator=generator, device=device)

    def _centre_offsets(self, n: int, hw, device) -> torch.Tensor:
        """The eval crop's offsets, made once per (N, image size, device): no host-to-device copy per call."""
        key = (n, hw, str(device))
        if key not in self._centre:
            self._centre[key] = center_crop_offsets(n, hw, self.crop_shape, device=device)
        return self._centre[key]

    def forward(self, obs: Dict[str, torch.Tensor], crop_offsets: Optional[Dict[str, torch.Tensor]] = None,
                generator: Optional[torch.Generator] = None, crop_backend: Optional[str] = None,
                core: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
        """core: another implementation of the VisualCores, core(key, cropped images) -> (N, feature_dim)
        (the `cpu` backend's oneDNN encoder, dp_fast/models/vision_onednn.py); default obs_nets[key]."""
        feats = []
        for key in self.obs_meta:
            x = obs[key]
            if key in self.obs_nets:
                off = None if crop_offsets is None else crop_offsets.get(key)
                x = self.crop(x, off, generator, crop_backend)
                feats.append(F.relu(self.obs_nets[key](x) if core is None else core(key, x)))
            else:
                feats.append(x.reshape(x.shape[0], -1))
        return torch.cat(feats, dim=-1)
