"""CUDA-graph sampler: the K-step loop (FastDenoiser + the ddpm_step op) captured once per
(batch, K, trajectory shape, noise source) and replayed.

Per call on the steady path: copy the observation features (and `noise=` if given) into static buffers,
replay one graph, clone the result. No host synchronisation: the timesteps, the step table and the
step indices are device tensors built before capture; the loop index is a Python int baked into the
graph; nothing reads a device value on the host.

Noise, in the original's draw order (noise[0] initial sample, then one draw per drawing iteration):
  * `noise=` given: copied into the static noise buffer.
  * `generator=` given: drawn outside the graph into that buffer, one torch.randn per draw (a
    torch.Generator cannot be replayed by a graph that was not told about it).
  * neither: drawn inside the graph from the default CUDA generator. CUDA graphs advance the philox
    offset of the default generator on every replay, so consecutive calls get fresh noise and a
    call gets the values the same draws would give in eager mode.

The same body runs uncaptured (`capture=False`, or any non-CUDA device): that is how the CPU tests
check it against the reference loop, and what backend "triton" runs on a CPU policy.

Capture cost is recorded per key in `capture_seconds` (warm-up + capture, synchronised; it happens
once per key, outside the steady-state path).
"""
from __future__ import annotations

import copy
import time
from typing import Dict, Optional, Tuple

import torch

from ..models.transformer import TransformerForDiffusion
from ..ops import ddpm_step
from ..profiling import nvtx_range
from ..schedulers import NoiseScheduler
from .denoiser import FastDenoiser
from .noise import draw_noise


class _EncoderOnly:
    """The encoder-only transformer (time_as_cond=False) as a denoiser: it has no cross-attention to
    precompute, so each step is the model's own forward (in the requested dtype)."""

    def __init__(self, model: TransformerForDiffusion, dtype: torch.dtype):
        self.model = model if model.head.weight.dtype == dtype else copy.deepcopy(model).to(dtype)
        self.dtype = dtype

    def prepare(self, cond, timesteps, key=None):
        return timesteps

    def eps(self, x, i, timesteps):
        return self.model(x.to(self.dtype), timesteps.index_select(0, i.reshape(1)), None)


class _Static:
    """Buffers and (when captured) the graph of one key."""

    def __init__(self, shape, n_noise, cond_shape, device, k, sched, inpaint: bool):
        self.x_shape = shape
        self.noise = torch.zeros((n_noise,) + tuple(shape), device=device)
        self.cond = None if cond_shape is None else torch.zeros(cond_shape, device=device)
        self.data = torch.zeros(shape, device=device) if inpaint else None
        self.mask = torch.zeros(shape, device=device, dtype=torch.bool) if inpaint else None
        self.timesteps = sched.timesteps(k)            # device tensors made before capture
        self.table = sched.step_table(k)
        self.key = tuple(sched.timestep_list(k))
        self.plan = sched.noise_plan(k)
        self.zeros = torch.zeros(shape, device=device)  # the step noise of iterations that draw none
        self.timesteps_index = torch.arange(k, device=device)  # 0-d views as device step indices
        self.prep = None
        self.out: Optional[torch.Tensor] = None
        self.graph = None


class GraphSampler:
    """The fast K-step loop of a TransformerForDiffusion, CUDA-graph captured on CUDA devices."""

    def __init__(self, model: TransformerForDiffusion, dtype: torch.dtype = torch.float32, capture: bool = True,
                 step_backend: str = "reference"):
        """dtype: the denoiser's compute dtype; capture: CUDA-graph capture on CUDA devices; step_backend:
        the backend of the dp_fast.ops.ddpm_step op that takes each scheduler step."""
        self.model = model
        self.dtype = dtype
        self.den = _EncoderOnly(model, dtype) if model.encoder_only else FastDenoiser(model, dtype)
        self.capture = capture
        self.step_backend = step_backend
        self._static: Dict[tuple, _Static] = {}
        self.capture_seconds: Dict[tuple, float] = {}

    def _body(self, st: _Static, rng_in_graph: bool) -> torch.Tensor:
        """The whole loop on static buffers; returns the final sample (a new tensor)."""
        if rng_in_graph:
            for j in range(st.noise.shape[0]):
                st.noise[j].normal_()
        prep = self.den.prepare(st.cond, st.timesteps, st.key)
        st.prep = prep  # a captured graph reads these tensors: keep them alive as long as the graph
        x = st.noise[0]
        for i, j in enumerate(st.plan):
            with nvtx_range("step"):  # recorded at capture / on eager runs; a replay has no host work per step
                if st.mask is not None:
                    x = torch.where(st.mask, st.data, x)
                step = st.timesteps_index[i]
                eps = self.den.eps(x, step, prep)
                x = ddpm_step(x, eps.to(x.dtype).contiguous(), st.noise[j] if j >= 0 else st.zeros, st.table, step,
                              backend=self.step_backend)
        if st.mask is not None:
            x = torch.where(st.mask, st.data, x)
        return x

    def sample(self, sched: NoiseScheduler, k: int, shape, cond: Optional[torch.Tensor],
               noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
               inpaint: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        """The K-step loop, arguments as ReferenceSampler.sample. Returns the final sample (B, T, D) in float32."""
        device = self.model.head.weight.device
        graphed = self.capture and device.type == "cuda"
        rng_in_graph = graphed and noise is None and generator is None
        n_noise = sched.num_noise(k)
        key = (tuple(shape), k, None if cond is None else tuple(cond.shape), inpaint is not None, rng_in_graph,
               str(device))
        st = self._static.get(key)
        if st is None:
            st = _Static(shape, n_noise, None if cond is None else cond.shape, device, k, sched, inpaint is not None)
            self._static[key] = st
        if cond is not None:
            st.cond.copy_(cond)
        if inpaint is not None:
            st.data.copy_(inpaint[0])
            st.mask.copy_(inpaint[1])
        if noise is not None:
            st.noise.copy_(noise[:n_noise])
        elif generator is not None or not graphed:
            st.noise.copy_(draw_noise(n_noise, shape, generator, device, st.noise.dtype))
        if not graphed:
            with torch.no_grad():
                return self._body(st, rng_in_graph=False)
        if st.graph is None:
            self._capture(st, key, rng_in_graph)
        with nvtx_range("loop_replay"):
            st.graph.replay()
        return st.out.clone()

    def _capture(self, st: _Static, key, rng_in_graph: bool) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up: lazy inits, cuBLAS handles, caches of FastDenoiser
                self._body(st, rng_in_graph=False)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with nvtx_range("capture"), torch.cuda.graph(graph):
                st.out = self._body(st, rng_in_graph)
            torch.cuda.synchronize()  # once per key, to time the capture; not on the replay path
        st.graph = graph
        self.capture_seconds[key] = time.perf_counter() - t0
