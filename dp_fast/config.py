"""Configuration dataclasses with the seed configuration's defaults, and named presets.

The seed configuration is the original Diffusion Policy transformer hybrid-image workspace
(`train_diffusion_transformer_hybrid_workspace.yaml` with `task=square_image`); see docs/numerics.md.
Configs are frozen; derive variants with `dataclasses.replace` or `PolicyConfig.from_dict`.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from .ops.random_crop import CROP_MODES

SEED_SHAPE_META: Dict[str, Any] = {
    "obs": {
        "agentview_image": {"shape": [3, 84, 84], "type": "rgb"},
        "robot0_eye_in_hand_image": {"shape": [3, 84, 84], "type": "rgb"},
        "robot0_eef_pos": {"shape": [3]},
        "robot0_eef_quat": {"shape": [4]},
        "robot0_gripper_qpos": {"shape": [2]},
    },
    "action": {"shape": [7]},
}

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log")
PREDICTION_TYPES = ("epsilon", "sample")


@dataclass(frozen=True)
class SchedulerConfig:
    """Noise scheduler settings; names follow diffusers' DDPMScheduler / DDIMScheduler configs.

    kind: "ddpm" or "ddim". `eta` and `set_alpha_to_one` only matter for DDIM; `steps_offset` shifts the
    inference timesteps of both (as current diffusers does).
    """

    kind: str = "ddpm"
    num_train_timesteps: int = 100
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "squaredcos_cap_v2"
    variance_type: str = "fixed_small"
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    prediction_type: str = "epsilon"
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    eta: float = 0.0

    def __post_init__(self):
        _check_choice("scheduler.kind", self.kind, ("ddpm", "ddim"))
        _check_choice("scheduler.beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("scheduler.variance_type", self.variance_type, VARIANCE_TYPES)
        _check_choice("scheduler.prediction_type", self.prediction_type, PREDICTION_TYPES)
        if int(self.num_train_timesteps) < 1:
            raise ValueError(f"scheduler.num_train_timesteps must be >= 1, got {self.num_train_timesteps}")


@dataclass(frozen=True)
class PolicyConfig:
    """DiffusionTransformerHybridImagePolicy settings (defaults = the seed configuration).

    crop_mode: how random crops pick their offsets. "uniform" draws every valid offset
    (0..H-h) with equal probability; "original" reproduces the original code, which draws
    `floor((H-h) * U[0,1))` and so never picks the last offset (H-h).
    eval_fixed_crop: eval mode centre-crops (True, the seed configuration); False crops at random in
    eval mode too, as the original's robomimic crop randomizer does then.
    obs_encoder_group_norm: must be True (GroupNorm ResNets); the original's False (BatchNorm) is refused.
    """

    shape_meta: Dict[str, Any] = field(default_factory=lambda: copy.deepcopy(SEED_SHAPE_META))
    horizon: int = 10
    n_action_steps: int = 8
    n_obs_steps: int = 2
    num_inference_steps: Optional[int] = 100
    crop_shape: Optional[Tuple[int, int]] = (76, 76)
    obs_encoder_group_norm: bool = True
    eval_fixed_crop: bool = True
    n_layer: int = 8
    n_cond_layers: int = 0
    n_head: int = 4
    n_emb: int = 256
    p_drop_emb: float = 0.0
    p_drop_attn: float = 0.3
    causal_attn: bool = True
    time_as_cond: bool = True
    obs_as_cond: bool = True
    pred_action_steps_only: bool = False
    crop_mode: str = "uniform"
    # ResNet18 base width (channels of the stem and first stage; later stages double it). 64 is the
    # original; smaller values (a multiple of 16, for GroupNorm's C // 16 groups) make CPU-sized presets.
    vision_width: int = 64
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)

    def __post_init__(self):
        if self.crop_shape is not None:
            object.__setattr__(self, "crop_shape", tuple(int(v) for v in self.crop_shape))
        if isinstance(self.scheduler, dict):
            object.__setattr__(self, "scheduler", SchedulerConfig(**self.scheduler))
        _check_choice("policy.crop_mode", self.crop_mode, CROP_MODES)
        if not self.obs_encoder_group_norm:
            raise ValueError("policy.obs_encoder_group_norm=False (the original's BatchNorm ResNet18) is not "
                             "implemented: dp_fast builds GroupNorm encoders only (True, the seed configuration)")
        if "obs" not in self.shape_meta or "action" not in self.shape_meta:
            raise ValueError(f"shape_meta needs 'obs' and 'action' entries, got keys {list(self.shape_meta)}")
        if len(self.shape_meta["action"]["shape"]) != 1:
            raise ValueError(f"shape_meta['action']['shape'] must be 1-d, got {self.shape_meta['action']['shape']}")
        for key, meta in self.shape_meta["obs"].items():
            kind = meta.get("type", "low_dim")
            if kind not in ("rgb", "low_dim"):
                raise ValueError(f"shape_meta obs '{key}': type must be 'rgb' or 'low_dim', got {kind!r}")
            if kind == "rgb" and len(meta["shape"]) != 3:
                raise ValueError(f"shape_meta obs '{key}': rgb shape must be [C, H, W], got {meta['shape']}")
        if self.vision_width < 16 or self.vision_width % 16 != 0:
            raise ValueError(f"vision_width must be a positive multiple of 16 (GroupNorm uses C // 16 groups), "
                             f"got {self.vision_width}")
        if self.n_emb % self.n_head != 0:
            raise ValueError(f"n_emb ({self.n_emb}) must be divisible by n_head ({self.n_head})")
        if not self.time_as_cond and self.obs_as_cond:
            raise ValueError("time_as_cond=False (encoder-only transformer) requires obs_as_cond=False, "
                             "as in the original TransformerForDiffusion")
        if self.pred_action_steps_only and not self.obs_as_cond:
            raise ValueError("pred_action_steps_only requires obs_as_cond=True")
        if self.n_obs_steps - 1 + self.n_action_steps > self.horizon and not self.pred_action_steps_only:
            raise ValueError(f"n_obs_steps - 1 + n_action_steps = {self.n_obs_steps - 1 + self.n_action_steps} "
                             f"exceeds horizon {self.horizon}")

    # derived quantities -------------------------------------------------------------
    @property
    def action_dim(self) -> int:
        return int(self.shape_meta["action"]["shape"][0])

    @property
    def rgb_keys(self) -> Tuple[str, ...]:
        return tuple(k for k, m in self.shape_meta["obs"].items() if m.get("type", "low_dim") == "rgb")

    @property
    def low_dim_keys(self) -> Tuple[str, ...]:
        return tuple(k for k, m in self.shape_meta["obs"].items() if m.get("type", "low_dim") == "low_dim")

    @property
    def inference_steps(self) -> int:
        return int(self.num_inference_steps or self.scheduler.num_train_timesteps)

    # (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["crop_shape"] = list(self.crop_shape) if self.crop_shape is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PolicyConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PolicyConfig keys {sorted(unknown)}; known: {sorted(names)}")
        d = dict(d)
        if isinstance(d.get("scheduler"), dict):
            d["scheduler"] = SchedulerConfig(**d["scheduler"])
        return cls(**d)


def _check_choice(name: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
