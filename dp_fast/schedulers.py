"""DDPM / DDIM noise schedulers: diffusers-faithful reference steps and coefficient tables for kernels.

Semantics follow diffusers' `DDPMScheduler` / `DDIMScheduler` (current versions, `timestep_spacing="leading"`,
no thresholding, `use_clipped_model_output=False`); docs/numerics.md (Schedulers). diffusers is not imported here.

Two forms of one denoising step:
  * `NoiseScheduler.step` -- the clear reference, written like the diffusers code (x0 prediction, clip, posterior).
  * `NoiseScheduler.step_table(K)` + `step_from_table` (dp_fast.ops.ddpm_step, the op's reference) -- every step as 10 per-iteration coefficients, so a fused
    kernel needs only one table row (indexed by a device tensor, no host sync):
        x0   = clamp(a * x_t + b * m, lo, hi)
        eps  = c * x_t + d * m
        prev = e * x0 + f * x_t + g * eps + sigma * noise
    DDPM has c = d = g = 0; DDIM has f = 0. sigma = 0 where no noise is drawn.

Noise convention of a sampling loop of K iterations (`noise_plan(K)` gives each iteration's noise index):
noise[0] is the initial sample and the n-th drawing iteration uses noise[n]. DDPM (steps_offset = 0) draws in
iterations 0..K-2 (t > 0), so the loop needs K noise tensors: noise[i + 1] for iteration i. DDIM with eta = 0
draws nothing; DDIM with eta > 0 draws in every iteration (diffusers does so even at the last step), K + 1 tensors.
"""
from __future__ import annotations

import math
import operator
from typing import Dict, List, Optional, Tuple, Union

import torch

from .config import SchedulerConfig
from .ops.add_noise import add_noise_ref
from .ops.ddpm_step import TABLE_COLUMNS, is_int_tensor, same_shape_as, step_from_table

_MIN_VARIANCE = 1e-20  # diffusers clamps the DDPM posterior variance from below by this


def _betas(cfg: SchedulerConfig) -> torch.Tensor:
    """(T,) float32 betas built with the same ops and precision as diffusers (on the CPU)."""
    n = int(cfg.num_train_timesteps)
    if cfg.beta_schedule == "linear":
        return torch.linspace(cfg.beta_start, cfg.beta_end, n, dtype=torch.float32)
    if cfg.beta_schedule == "scaled_linear":
        return torch.linspace(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, n, dtype=torch.float32) ** 2
    # squaredcos_cap_v2 (Nichol & Dhariwal 2021): float64 Python math, capped at 0.999, cast once to float32.
    def abar(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
    return torch.tensor([min(1.0 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float32)


class NoiseScheduler:
    """DDPM / DDIM schedule of a `SchedulerConfig`, with its tables on `device`.

    Attributes: `betas`, `alphas`, `alphas_cumprod` -- (T,) float32, bit-identical to diffusers' tensors.

    DDPM with K < T steps: current diffusers steps from t to the next listed timestep (t - T//K) with the
    effective alpha_t = abar_t / abar_prev, beta_t = 1 - alpha_t. diffusers 0.11.1, which produced the original
    Diffusion Policy checkpoints, always stepped from t to t - 1 with the stored betas[t], alphas[t]. This class
    follows current diffusers for the step targets; for K == T (all original checkpoints) both pick t - 1.
    A step that moves exactly one train step (t -> t - 1, which includes the last step t = 0 for any K) uses the
    stored float32 betas[t] / alphas[t], as 0.11.1 (the original's version) does: equal to 1 - abar_t / abar_{t-1} in exact
    arithmetic, but that ratio of float32 cumprods loses up to ~1e-4 relative in small betas, so current
    diffusers' float32 step drifts from the original by ~1e-5 (seed schedule, t = 0) to ~5e-4 (T = 1000).
    DDPM also honours `steps_offset` in its timesteps, as current diffusers does.
    """

    def __init__(self, config: Optional[SchedulerConfig] = None, device: Union[str, torch.device, None] = None):
        cfg = config if config is not None else SchedulerConfig()
        if not isinstance(cfg, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(cfg).__name__}")
        if cfg.eta < 0:
            raise ValueError(f"scheduler.eta must be >= 0, got {cfg.eta}")
        if cfg.clip_sample and not cfg.clip_sample_range > 0:
            raise ValueError(f"scheduler.clip_sample_range must be > 0, got {cfg.clip_sample_range}")
        if cfg.steps_offset < 0:
            raise ValueError(f"scheduler.steps_offset must be >= 0, got {cfg.steps_offset}")
        self.config = cfg
        self.num_train_timesteps = int(cfg.num_train_timesteps)
        betas = _betas(cfg)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"scheduler betas must lie in (0, 1); beta_schedule={cfg.beta_schedule!r} with "
                             f"beta_start={cfg.beta_start}, beta_end={cfg.beta_end} gives "
                             f"[{betas.min().item()}, {betas.max().item()}]")
        self.betas = betas
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        # exact float32 values, as float64 (host copies, so building tables never reads the device)
        self._beta: List[float] = betas.double().tolist()
        self._alpha: List[float] = self.alphas.double().tolist()
        self._abar: List[float] = self.alphas_cumprod.double().tolist()
        # abar "before" the first step: DDPM always uses 1; DDIM uses 1 or abar_0 (set_alpha_to_one).
        self._abar_final = 1.0 if (cfg.kind == "ddpm" or cfg.set_alpha_to_one) else self._abar[0]
        self._tables: Dict[int, torch.Tensor] = {}
        self._plans: Dict[int, Tuple[int, ...]] = {}
        self._ts_cache: Dict[int, tuple] = {}  # K -> (timesteps list, {timestep: loop index})
        self.device = torch.device("cpu")
        self.to(device if device is not None else "cpu")

    def to(self, device: Union[str, torch.device]) -> "NoiseScheduler":
        """Moves the tables to `device` (in place) and returns self."""
        self.device = torch.device(device)
        self.betas, self.alphas, self.alphas_cumprod = (x.to(self.device) for x in
                                                        (self.betas, self.alphas, self.alphas_cumprod))
        self._tables = {k: v.to(self.device) for k, v in self._tables.items()}
        return self

    # ---------------------------------------------------------------------------------- timesteps
    def timestep_list(self, num_inference_steps: int) -> List[int]:
        """The K descending timesteps as python ints (what `timesteps` holds), checked and cached."""
        k, n = num_inference_steps, self.num_train_timesteps
        try:
            k = operator.index(k)
        except TypeError:
            raise TypeError(f"num_inference_steps must be an int in [1, {n}], got {k!r}") from None
        if isinstance(num_inference_steps, bool):
            raise TypeError(f"num_inference_steps must be an int in [1, {n}], got {k!r}")
        if k in self._ts_cache:
            return self._ts_cache[k][0]
        if not 1 <= k <= n:
            raise ValueError(f"num_inference_steps must be in [1, num_train_timesteps={n}], got {k}")
        ratio = n // k
        ts = [(k - 1 - i) * ratio + self.config.steps_offset for i in range(k)]
        if ts[0] > n - 1:
            raise ValueError(f"steps_offset={self.config.steps_offset} with num_inference_steps={k} gives first "
                             f"timestep {ts[0]}, outside [0, {n - 1}]")
        self._ts_cache[k] = (ts, {t: i for i, t in enumerate(ts)})
        return ts

    def timesteps(self, num_inference_steps: int) -> torch.Tensor:
        """(K,) int64 descending timesteps on the scheduler's device ("leading" spacing + steps_offset)."""
        return torch.tensor(self.timestep_list(num_inference_steps), dtype=torch.int64, device=self.device)

    def _prev_t(self, num_inference_steps: int, t: int) -> int:
        """Timestep the step from t lands on; negative past the end (diffusers' `prev_t`)."""
        if self.config.kind == "ddpm":  # next entry of the timestep list; none after the last one
            ts = self.timestep_list(num_inference_steps)
            pos = self._ts_cache[num_inference_steps][1][t]
            return ts[pos + 1] if pos + 1 < len(ts) else -1
        return t - self.num_train_timesteps // num_inference_steps

    def _prev_abar(self, num_inference_steps: int, t: int) -> float:
        """abar of the timestep the step from t lands on (the `alpha_prod_t_prev` of diffusers)."""
        prev = self._prev_t(num_inference_steps, t)
        return self._abar[prev] if prev >= 0 else self._abar_final

    def _ddpm_alpha_beta(self, num_inference_steps: int, t: int):
        """(alpha, beta) of the DDPM step from t: stored alphas[t], betas[t] for a one-train-step move, else
        1 - beta = abar_t / abar_prev (see the class docstring)."""
        if self._prev_t(num_inference_steps, t) == t - 1:
            return self._alpha[t], self._beta[t]
        alpha = self._abar[t] / self._prev_abar(num_inference_steps, t)
        return alpha, 1.0 - alpha

    def _draws_noise(self, t: int) -> bool:
        return t > 0 if self.config.kind == "ddpm" else self.config.eta > 0

    def noise_plan(self, num_inference_steps: int) -> Tuple[int, ...]:
        """The noise plan of a K-step loop: for each iteration i, the index into the (N, ...) noise tensor
        of the step noise it uses, or -1 where diffusers draws none (see the module docstring). Every
        sampling loop, the C++ one included, reads its noise through this plan. Cached per K."""
        k = len(self.timestep_list(num_inference_steps))
        if k not in self._plans:
            plan, used = [], 1
            for t in self.timestep_list(num_inference_steps):
                draws = self._draws_noise(t)
                plan.append(used if draws else -1)
                used += draws
            self._plans[k] = tuple(plan)
        return self._plans[k]

    def num_noise(self, num_inference_steps: int) -> int:
        """Noise tensors one sampling loop consumes: the initial sample plus one per drawing iteration."""
        return 1 + sum(j >= 0 for j in self.noise_plan(num_inference_steps))

    def _variance(self, a_t: float, a_prev: float) -> float:
        """DDIM's variance (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)."""
        return (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)

    def _ddim_direction(self, a_prev: float, std: float) -> float:
        r = 1.0 - a_prev - std * std
        if r < -1e-12:
            raise ValueError(f"scheduler.eta={self.config.eta} is too large: 1 - abar_prev - sigma^2 = {r} < 0")
        return math.sqrt(max(r, 0.0))

    # ---------------------------------------------------------------------------------- training
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise. x0, noise: (B, ...); t: (B,) int64.

        Device-side gather, no host sync (so t is not range-checked; on CUDA an out-of-range t is a device assert).
        """
        if not isinstance(x0, torch.Tensor) or x0.dim() < 1:
            raise ValueError(f"x0 must be a tensor of shape (B, ...), got {getattr(x0, 'shape', type(x0).__name__)}")
        same_shape_as("noise", noise, x0)
        if not is_int_tensor(t):
            raise TypeError(f"t must be an integer tensor of shape ({x0.shape[0]},), got "
                            f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
        if tuple(t.shape) != (x0.shape[0],):
            raise ValueError(f"t must have shape (B,) = ({x0.shape[0]},) to match x0 {tuple(x0.shape)}, "
                             f"got {tuple(t.shape)}")
        # dp_fast.ops.add_noise_ref: diffusers' ops in diffusers' order (bit-identical for float32; tested)
        return add_noise_ref(x0, noise, t.to(x0.device), self.alphas_cumprod.to(x0.device))

    # ---------------------------------------------------------------------------------- reference step
    def step(self, model_output: torch.Tensor, t: Union[int, torch.Tensor], sample: torch.Tensor,
             noise: Optional[torch.Tensor] = None, num_inference_steps: Optional[int] = None) -> torch.Tensor:
        """One reverse step from timestep t (the clear reference; reads t on the host).

        model_output, sample, noise: same shape. t: python int or 0-d / 1-element integer tensor, one of
        `timesteps(K)` for DDPM (any of 0..T-1 for DDIM, as in diffusers). num_inference_steps: K, default T.
        noise: required where `noise_plan` draws for t (DDPM: t > 0; DDIM: eta > 0); ignored elsewhere.
        """
        cfg = self.config
        k = self.num_train_timesteps if num_inference_steps is None else num_inference_steps
        ts = self.timestep_list(k)
        k, t = len(ts), self._timestep_int(t)
        if cfg.kind == "ddpm" and t not in self._ts_cache[k][1]:
            raise ValueError(f"timestep {t} is not one of the {k} DDPM timesteps {ts[:3]}...{ts[-1:]} "
                             f"(num_inference_steps={k})")
        if not isinstance(sample, torch.Tensor):
            raise TypeError(f"sample must be a tensor, got {type(sample).__name__}")
        same_shape_as("model_output", model_output, sample)
        needs_noise = self._draws_noise(t)
        if needs_noise:
            if noise is None:
                raise ValueError(f"noise of shape {tuple(sample.shape)} is needed at timestep {t} "
                                 f"({cfg.kind}, eta={cfg.eta}), got None")
            same_shape_as("noise", noise, sample)
        a_t, a_prev = self._abar[t], self._prev_abar(k, t)
        beta_prod_t = 1.0 - a_t

        if cfg.prediction_type == "epsilon":
            x0 = (sample - beta_prod_t ** 0.5 * model_output) / a_t ** 0.5
        else:
            x0 = model_output
        if cfg.clip_sample:
            x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)

        if cfg.kind == "ddpm":
            alpha_t, beta_t = self._ddpm_alpha_beta(k, t)
            mean = (a_prev ** 0.5 * beta_t / beta_prod_t) * x0 \
                + (alpha_t ** 0.5 * (1.0 - a_prev) / beta_prod_t) * sample
            if not needs_noise:
                return mean
            # fixed_small: sqrt(var); fixed_small_log: exp(0.5 log var) -- the same number.
            return mean + math.sqrt(max((1.0 - a_prev) / beta_prod_t * beta_t, _MIN_VARIANCE)) * noise

        # DDIM's eps comes from the model output, i.e. from the unclipped x0 (use_clipped_model_output=False)
        if cfg.prediction_type == "epsilon":
            eps = model_output
        else:
            eps = (sample - a_t ** 0.5 * model_output) / beta_prod_t ** 0.5
        std = cfg.eta * math.sqrt(self._variance(a_t, a_prev))
        prev = a_prev ** 0.5 * x0 + self._ddim_direction(a_prev, std) * eps
        return prev + std * noise if needs_noise else prev

    def _timestep_int(self, t) -> int:
        if isinstance(t, torch.Tensor):
            if not is_int_tensor(t) or t.numel() != 1:
                raise TypeError(f"timestep tensor must be integer with one element, got dtype {t.dtype} "
                                f"shape {tuple(t.shape)}")
            t = int(t.reshape(()).item())
        elif isinstance(t, bool) or not isinstance(t, int):
            raise TypeError(f"timestep must be a python int or an integer tensor, got {type(t).__name__}")
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep must be in [0, {self.num_train_timesteps - 1}], got {t}")
        return t

    # ---------------------------------------------------------------------------------- table form
    def step_table(self, num_inference_steps: int) -> torch.Tensor:
        """(K, 10) float32 on the device; row i = loop iteration i, columns `TABLE_COLUMNS`.

        Coefficients are computed in float64 from the float32 alphas_cumprod and cast once. Cached per K.
        """
        timesteps = self.timestep_list(num_inference_steps)
        k = len(timesteps)
        if k in self._tables:
            return self._tables[k]
        cfg = self.config
        r = cfg.clip_sample_range if cfg.clip_sample else math.inf
        rows = []
        for t in timesteps:
            a_t, a_prev = self._abar[t], self._prev_abar(k, t)
            sa, sb = math.sqrt(a_t), math.sqrt(1.0 - a_t)
            if cfg.prediction_type == "epsilon":
                a, b, c, d = 1.0 / sa, -sb / sa, 0.0, 1.0
            else:
                a, b, c, d = 0.0, 1.0, 1.0 / sb, -sa / sb
            if cfg.kind == "ddpm":
                alpha, beta = self._ddpm_alpha_beta(k, t)
                c = d = g = 0.0
                e = math.sqrt(a_prev) * beta / (1.0 - a_t)
                f = math.sqrt(alpha) * (1.0 - a_prev) / (1.0 - a_t)
                var = (1.0 - a_prev) / (1.0 - a_t) * beta
                sigma = math.sqrt(max(var, _MIN_VARIANCE)) if self._draws_noise(t) else 0.0
            else:
                sigma = cfg.eta * math.sqrt(self._variance(a_t, a_prev))
                e, f, g = math.sqrt(a_prev), 0.0, self._ddim_direction(a_prev, sigma)
            rows.append((a, b, c, d, e, f, g, sigma, -r, r))
        table = torch.tensor(rows, dtype=torch.float64).to(torch.float32).to(self.device)
        self._tables[k] = table
        return table
