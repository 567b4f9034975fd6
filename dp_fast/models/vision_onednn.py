"""The `cpu` backend's observation encoder: the ResNets' convolutions through oneDNN with packed weights.

Plain PyTorch runs each Conv2d of an NCHW tensor through oneDNN too, but reorders the activations to
oneDNN's blocked layout and back, and the weights to their packed layout, at every call: for the two
ResNet18s of the seed configuration that is ~90 MB of weights rewritten per predict_action. Here the
weights are packed once (torch.ops.mkldnn._reorder_convolution_weight, per batch size, as inductor's
freezing pass does), the activations stay channels_last from the first layer to the spatial softmax, and
each GroupNorm runs with the ReLU and the residual add that follow it in one pass (the extension's
dp_fast::group_norm_act, csrc/group_norm_act.cpp); max-pool, the spatial softmax and the linear stay the
reference's PyTorch ops. Same math as VisualCore.forward (features within 1e-4 of it: tests/test_vision_onednn.py),
for inference only (no autograd).

bf16 (the policy's precision="bf16" on a CPU where oneDNN has native bf16, i.e. AVX512_BF16 / AMX): the
packed weights and each convolution's input are bf16 and oneDNN returns the output rounded to bf16,
accumulating in fp32; the activations between the convolutions, GroupNorm, the residual adds, the pool,
the spatial softmax and the linear stay fp32. Held to a plain-PyTorch emulation of that arithmetic
(tests/test_vision_onednn.py).

Used by DiffusionPolicy.encode_obs when the resolution's encoder is "onednn" (dp_fast.backends) and grad
is off; rebuilt when the encoder's weights change (see OnednnEncoder.run).
"""
from __future__ import annotations

import functools
from typing import Dict, List, Tuple

import torch
from torch import nn

from .. import _ext
from .vision import BasicBlock, ObsEncoder, VisualCore


@functools.lru_cache(maxsize=None)
def native_bf16() -> bool:
    """Whether oneDNN runs bf16 convolutions natively on this CPU (AVX512_BF16 / AMX); elsewhere they would be
    emulated and slower than fp32, so precision="bf16" keeps the encoder in fp32 there."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class _PackedCore:
    """One VisualCore with its convolutions' weights packed for inputs of batch N."""

    def __init__(self, core: VisualCore, n: int, hw: Tuple[int, int], channels: int,
                 dtype: torch.dtype = torch.float32):
        self.core, self.dtype = core, dtype
        self.packed: Dict[nn.Conv2d, torch.Tensor] = {}
        sizes: Dict[nn.Conv2d, List[int]] = {}
        convs = [m for m in core.backbone.modules() if isinstance(m, nn.Conv2d)]
        hooks = [c.register_forward_hook(lambda m, i, o: sizes.__setitem__(m, list(i[0].shape))) for c in convs]
        try:
            with torch.no_grad():  # one reference pass of a zero batch records each convolution's input size
                core.backbone(torch.zeros(n, channels, *hw))
        finally:
            for h in hooks:
                h.remove()
        for c in convs:
            self.packed[c] = torch.ops.mkldnn._reorder_convolution_weight(
                c.weight.detach().to(dtype), list(c.padding), list(c.stride), list(c.dilation), c.groups, sizes[c])
        self.bias = {c: None if c.bias is None else c.bias.detach().to(dtype) for c in convs}

    def conv(self, c: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
        out = torch.ops.mkldnn._convolution_pointwise(x.to(self.dtype), self.packed[c], self.bias[c], list(c.padding),
                                                      list(c.stride), list(c.dilation), c.groups, "none", [], "")
        return out.float()

    @staticmethod
    def norm(gn: nn.GroupNorm, x: torch.Tensor, residual=None, relu: bool = True) -> torch.Tensor:
        """GroupNorm [+ residual] [+ ReLU] in one pass over the channels_last tensor (csrc/group_norm_act.cpp)."""
        return torch.ops.dp_fast.group_norm_act(x, gn.weight, gn.bias, gn.num_groups, gn.eps, residual, relu)

    def block(self, blk: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        idt = x if blk.downsample is None else self.norm(blk.downsample[1], self.conv(blk.downsample[0], x),
                                                         relu=False)
        out = self.norm(blk.bn1, self.conv(blk.conv1, x))
        return self.norm(blk.bn2, self.conv(blk.conv2, out), residual=idt)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        nets = self.core.backbone.nets
        x = x.contiguous(memory_format=torch.channels_last)
        x = nets[3](self.norm(nets[1], self.conv(nets[0], x)))  # stem conv, GroupNorm + ReLU, max-pool
        for stage in nets[4:]:
            for blk in stage:
                x = self.block(blk, x)
        kp = self.core.pool(x.contiguous())
        return self.core.nets["3"](kp.flatten(1))


class OnednnEncoder:
    """Packs an ObsEncoder's VisualCores per (camera, batch size); `run` is ObsEncoder.forward on them."""

    def __init__(self, encoder: ObsEncoder, dtype: torch.dtype = torch.float32):
        """dtype: of the convolutions' weights and inputs, torch.float32 (the reference's features within
        1e-4) or torch.bfloat16 (needs `native_bf16()`)."""
        _ext.require()  # dp_fast::group_norm_act
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the oneDNN encoder runs float32 or bfloat16 convolutions, got {dtype}")
        if dtype == torch.bfloat16 and not native_bf16():
            raise ValueError("bf16 convolutions need a CPU with native bf16 in oneDNN (AVX512_BF16 / AMX)")
        self.encoder, self.dtype = encoder, dtype
        self._packed: Dict[Tuple[str, int, Tuple[int, int]], _PackedCore] = {}
        self._key = None

    def _weights_key(self):
        return tuple((p.data_ptr(), p._version) for p in self.encoder.parameters())

    def _core(self, key: str, x: torch.Tensor) -> torch.Tensor:
        k = (key, x.shape[0], tuple(x.shape[2:]))
        if k not in self._packed:
            self._packed[k] = _PackedCore(self.encoder.obs_nets[key], x.shape[0], tuple(x.shape[2:]), x.shape[1],
                                          self.dtype)
        return self._packed[k](x)

    def run(self, obs, generator=None, crop_backend=None) -> torch.Tensor:
        """ObsEncoder.forward(obs, None, generator, crop_backend) with the packed cores (no autograd)."""
        if torch.is_grad_enabled():
            raise RuntimeError("the oneDNN encoder is for inference: call it under torch.no_grad()")
        key = self._weights_key()
        if key != self._key:  # the weights were replaced or changed in place: pack again
            self._packed, self._key = {}, key
        return self.encoder(obs, generator=generator, crop_backend=crop_backend, core=self._core)
