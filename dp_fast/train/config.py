"""TrainConfig: the original workspace's config sections as dataclasses, presets, dotted overrides.

Section and field names follow the original `train_diffusion_transformer_hybrid_workspace.yaml`
(training.*, optimizer.*, ema.*, dataloader.*, val_dataloader.*, checkpoint.topk.*, task.*, logging.*), so an
override such as `training.num_epochs=5` means what it means there. Policy settings are PolicyConfig
fields (`policy.n_layer=4`, `policy.scheduler.kind=ddim`); a few original spellings are aliases
(`optimizer.lr`, `policy.noise_scheduler.*`, top-level `horizon`, `task.dataset.*`).
Defaults are the seed configuration (docs/numerics.md, "Seed configuration").
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..config import SEED_SHAPE_META, PolicyConfig, SchedulerConfig
from ..data.frames import parse_image_size
from .tracker import BACKENDS, WANDB_MODES


@dataclass
class TrainingSection:
    device: str = "auto"              # "auto": cuda if available, else cpu (the original: cuda:0)
    seed: int = 42
    debug: bool = False               # the original's training.debug: 2 epochs x 3 batches, everything every epoch
    resume: bool = True               # continue from OUT/checkpoints/latest.* when present
    lr_scheduler: str = "cosine"      # cosine | constant | constant_with_warmup | linear
    lr_warmup_steps: int = 10
    num_epochs: int = 100
    gradient_accumulate_every: int = 1
    use_ema: bool = True
    # every N epochs, at epochs 0, N, 2N, ... as the original; 0: never (not in the original)
    rollout_every: int = 10
    checkpoint_every: int = 10        # top-k checkpoints are considered at these epochs
    val_every: int = 1
    sample_every: int = 5
    max_train_steps: Optional[int] = None   # batches per epoch at most (the original's meaning)
    max_val_steps: Optional[int] = None     # validation batches per validation at most
    tqdm_interval_sec: float = 1.0
    # not in the original:
    checkpoint_every_steps: int = 500       # also save latest.* every N batches (mid-epoch resume); 0: off
    max_total_steps: Optional[int] = None   # stop (and checkpoint) after this many batches in total
    max_train_minutes: Optional[float] = None  # stop (and checkpoint) after this wall time, per invocation
    precision: str = "fp32"           # fp32 | bf16 (autocast for the forward pass)
    compile: bool = False             # torch.compile the policy's denoiser and obs encoder for training
    use_fast_ops: bool = False        # the loss's crop + add_noise on the policy's backend ops (else plain PyTorch)
    channels_last: bool = False
    # torch CPU threads (None: torch's default, one per core). On a CPU shared with other jobs, 1 avoids
    # OpenMP threads waiting on descheduled peers (measured here: 0.3 s/step with 1 thread, ~7 s with 2).
    # Resume equality on CPU needs the same thread count as the interrupted run.
    num_threads: Optional[int] = None
    # torchrun runs (docs/distributed.md): how long a rank waits for the others (at a collective, or while
    # rank 0 evaluates at an epoch's end) before the job fails naming the ranks that did not arrive
    dist_timeout_minutes: float = 60.0


@dataclass
class OptimizerSection:
    learning_rate: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    transformer_weight_decay: float = 1e-3
    obs_encoder_weight_decay: float = 1e-6
    impl: str = "auto"                # auto | plain | foreach | fused  (torch.optim.AdamW implementation)


@dataclass
class EMASection:
    update_after_step: int = 0
    inv_gamma: float = 1.0
    power: float = 0.75
    min_value: float = 0.0
    max_value: float = 0.9999


@dataclass
class DataLoaderSection:
    batch_size: int = 64
    shuffle: bool = True
    drop_last: bool = False


@dataclass
class ValDataLoaderSection:
    batch_size: int = 64
    shuffle: bool = False
    drop_last: bool = False


@dataclass
class TopKSection:
    monitor_key: str = "auto"         # auto: test_mean_score (max) when rollouts run, else val_loss (min)
    mode: str = "auto"                # min | max | auto (max for *score*, else min)
    k: int = 5


@dataclass
class CheckpointSection:
    topk: TopKSection = field(default_factory=TopKSection)


@dataclass
class EnvRunnerSection:
    n_train: int = 6
    n_test: int = 50
    n_envs: Optional[int] = None
    max_steps: int = 400
    test_start_seed: int = 100000
    n_videos: int = 1


@dataclass
class TaskSection:
    dataset_path: Optional[str] = None
    obs_keys: Optional[List[str]] = None   # None: the seed's keys present in the file (else all keys)
    # None: images as stored; N or [H, W]: every image resized once, at load (--image-size)
    image_size: Optional[Any] = None
    fixed_shape_meta: Optional[Dict[str, Any]] = None  # a preset's shape_meta; the file must match it
    val_ratio: float = 0.02
    seed: int = 42                    # the dataset split seed (task.dataset.seed in the original)
    max_train_episodes: Optional[int] = None
    action_norm: str = "identity"     # identity (the original, delta actions) | limits
    gpu_resident: bool = False        # keep the replay buffer on the training device
    env_runner: EnvRunnerSection = field(default_factory=EnvRunnerSection)


@dataclass
class LoggingSection:
    """The original's `logging` section (its wandb.init arguments) plus the backend (tracker.py)."""
    backend: str = "none"             # none (JSON lines only, always written) | wandb | tensorboard
    project: str = "dp_fast"
    name: Optional[str] = None        # None: wandb picks one
    mode: str = "online"              # wandb: online | offline (no network; `wandb sync` later) | disabled
    tags: List[str] = field(default_factory=list)
    group: Optional[str] = None
    id: Optional[str] = None          # wandb run id; None: the one kept in the checkpoint, else a new run
    resume: bool = True               # continue the tracker run of the checkpoint (False: a new run)


@dataclass
class TrainConfig:
    training: TrainingSection = field(default_factory=TrainingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    ema: EMASection = field(default_factory=EMASection)
    dataloader: DataLoaderSection = field(default_factory=DataLoaderSection)
    val_dataloader: ValDataLoaderSection = field(default_factory=ValDataLoaderSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    task: TaskSection = field(default_factory=TaskSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    policy: Dict[str, Any] = field(default_factory=dict)  # PolicyConfig overrides (dotted: scheduler.kind)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# the original's training.debug
DEBUG_OVERRIDES = {"training.num_epochs": 2, "training.max_train_steps": 3, "training.max_val_steps": 3,
                   "training.rollout_every": 1, "training.checkpoint_every": 1, "training.val_every": 1,
                   "training.sample_every": 1}

SEED_OBS_KEYS = list(SEED_SHAPE_META["obs"])
# The wrist camera: in Lift it sees the cube large and right where the hand must go, which a small
# encoder learns in a few thousand steps; agentview (the cube ~4 px at 84 px) learns far slower
# (benchmarks/RESULTS.md, "End-to-end demo").
WRIST_CPU_KEYS = ["robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]

PRESETS: Dict[str, Dict[str, Any]] = {
    # the seed configuration (can / square image, both cameras, 8 x 256 transformer)
    "seed": {"task.fixed_shape_meta": copy.deepcopy(SEED_SHAPE_META)},
    # sized for a 2-core CPU in ~10 minutes on Lift: the wrist camera (48 px images from
    # `dp-fast demos --image-size 48`; the crop keeps the seed's 76/84 ratio), narrow ResNet, 4 x 128
    # transformer without attention dropout (the run is short: it underfits, not overfits), a 16-step
    # action horizon (8 executed; the original's CNN image setting, here ~84% vs ~70% with 10), DDIM inference.
    # One thread: on a shared 2-core machine two OpenMP threads can be ~20x slower than one; on an idle
    # machine training.num_threads=2 is ~1.3x faster (scripts/demo.sh sets it).
    "cpu": {
        "task.obs_keys": WRIST_CPU_KEYS,
        "policy.vision_width": 16, "policy.n_layer": 4, "policy.n_emb": 128, "policy.n_head": 4,
        "policy.p_drop_attn": 0.0, "policy.horizon": 16,
        "policy.scheduler.kind": "ddim", "policy.num_inference_steps": 10,
        "dataloader.batch_size": 64, "val_dataloader.batch_size": 64,
        "optimizer.learning_rate": 1e-3, "training.lr_warmup_steps": 100,
        "training.num_epochs": 1000, "training.max_total_steps": 4800,
        "training.val_every": 5, "training.sample_every": 10, "training.rollout_every": 0,
        "training.checkpoint_every": 5, "training.checkpoint_every_steps": 200, "training.device": "cpu",
        "training.num_threads": 1,
    },
}
# The seed's own tasks on a 2-core CPU (scripts/task.sh): the Lift preset's model and sampler with both
# cameras (Can: grasp a can anywhere in its bin and place it in a fixed bin; Square: grasp a nut by its
# handle, turn and drop it over a fixed peg). The wrist camera alone does not see the object in ~1/3 of the
# initial states (a first Can run with it wandered in those and failed: 47/100), so agentview locates it.
# The step runs with the encoder in channels_last, fused AdamW and the C++ crop / noise ops (the same loss;
# together ~1.15x the plain step at 1 thread on an AVX-512 Xeon; at 2 threads channels_last 1.08x, fused
# AdamW 1.05x, the fast ops 0.96x alone; bf16 autocast and torch.compile are slower at this width).
# Can trains without the random crop (at 48 px it shifts the images by up to 5 px, and most Can failures
# are the hand going to the wrong place): 12800 steps with the crop 73/100, without 86/100 (the same demos,
# side by side, 1 thread each, 50-53 min on an Intel Xeon with AVX-512; benchmarks/RESULTS.md). Square
# too: 19200 steps without the crop 17/100 (85 min on 1 thread beside a second training, Zen 4 EPYC),
# with it 14/100 and 8/100 (62 min on 2 threads of the Xeon): within noise, far below the 60% target.
SEED_TASK_CPU_KEYS = ["robot0_eye_in_hand_image", "agentview_image", *WRIST_CPU_KEYS[1:]]
_SEED_TASK_CPU = {**PRESETS["cpu"], "task.obs_keys": SEED_TASK_CPU_KEYS, "training.checkpoint_every_steps": 500,
                  "training.channels_last": True, "optimizer.impl": "fused", "training.use_fast_ops": True,
                  "policy.crop_shape": None}
PRESETS["cpu-can"] = {**_SEED_TASK_CPU, "training.max_total_steps": 12800}
PRESETS["cpu-square"] = {**_SEED_TASK_CPU, "training.max_total_steps": 19200}

ALIASES = {
    "optimizer.lr": "optimizer.learning_rate",
    "training.lr": "optimizer.learning_rate",
    "optimizer.weight_decay": "optimizer.transformer_weight_decay",
    "horizon": "policy.horizon",
    "n_obs_steps": "policy.n_obs_steps",
    "n_action_steps": "policy.n_action_steps",
    "task.dataset.dataset_path": "task.dataset_path",
    "dataset_path": "task.dataset_path",
}
_PREFIX_ALIASES = (("policy.noise_scheduler.", "policy.scheduler."), ("task.dataset.", "task."))


def _policy_keys() -> List[str]:
    keys = [f"policy.{f.name}" for f in dataclasses.fields(PolicyConfig) if f.name not in ("shape_meta", "scheduler")]
    keys += [f"policy.scheduler.{f.name}" for f in dataclasses.fields(SchedulerConfig)]
    return keys


def _section_keys(obj, prefix: str) -> List[str]:
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out += _section_keys(v, f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def known_keys() -> List[str]:
    cfg = TrainConfig()
    keys = [k for k in _section_keys(cfg, "") if k != "policy"]
    return keys + _policy_keys()


def canonical_key(key: str) -> str:
    """Resolve aliases; raise KeyError listing close names for an unknown key."""
    key = ALIASES.get(key, key)
    for old, new in _PREFIX_ALIASES:
        if key.startswith(old):
            key = new + key[len(old):]
    known = known_keys()
    if key not in known:
        close = difflib.get_close_matches(key, known + list(ALIASES), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        section = key.split(".")[0]
        same = [k for k in known if k.startswith(section + ".")]
        if same:
            listing = f" Keys in '{section}': {', '.join(same)}." if not close else ""
        else:
            sections = sorted({k.split(".")[0] for k in known if "." in k})
            listing = f" Sections: {', '.join(sections)} (--list-keys prints every key)."
        raise KeyError(f"unknown config key '{key}'{hint}{listing}")
    return key


def parse_value(text: str) -> Any:
    """A Python literal (5, 1e-4, True, None, [1, 2], (76, 76)); anything else is a string (cuda:0)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        low = text.strip().lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        return text


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """['a.b=1', ...] -> {'a.b': 1}; a malformed item raises ValueError."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not of the form key=value (e.g. training.num_epochs=5)")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v.strip())
    return out


def _check_type(key: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError(f"{key} expects True or False, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{key} expects an int, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} expects a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError(f"{key} expects a string, got {value!r}")
    elif isinstance(default, (tuple, list)):
        if not isinstance(value, (tuple, list)):
            raise TypeError(f"{key} expects a list, got {value!r}")
        value = type(default)(value)
    return value


def apply_overrides(cfg: TrainConfig, overrides: Mapping[str, Any]) -> TrainConfig:
    """A new TrainConfig with dotted overrides applied (aliases resolved, types checked)."""
    cfg = copy.deepcopy(cfg)
    for raw, value in overrides.items():
        key = canonical_key(raw)
        if key.startswith("policy."):
            cfg.policy[key[len("policy."):]] = value
            continue
        *path, name = key.split(".")
        obj = cfg
        for p in path:
            obj = getattr(obj, p)
        default = getattr(type(obj)(), name)
        setattr(obj, name, _check_type(key, default, value))
    return cfg


def build_config(preset: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> TrainConfig:
    """Defaults <- preset <- overrides; training.debug=True then applies the original's debug settings."""
    cfg = TrainConfig()
    if preset is not None:
        if preset not in PRESETS:
            raise KeyError(f"unknown preset '{preset}'; presets: {sorted(PRESETS)}")
        cfg = apply_overrides(cfg, PRESETS[preset])
    cfg = apply_overrides(cfg, overrides or {})
    if cfg.training.debug:
        cfg = apply_overrides(cfg, DEBUG_OVERRIDES)
    _validate(cfg)
    return cfg


def _validate(cfg: TrainConfig) -> None:
    t = cfg.training
    if t.num_threads is not None and t.num_threads < 1:
        raise ValueError(f"training.num_threads must be >= 1 or None, got {t.num_threads}")
    for name in ("num_epochs", "gradient_accumulate_every"):
        if getattr(t, name) < 1:
            raise ValueError(f"training.{name} must be >= 1, got {getattr(t, name)}")
    for name in ("rollout_every", "checkpoint_every", "val_every", "sample_every", "checkpoint_every_steps"):
        if getattr(t, name) < 0:
            raise ValueError(f"training.{name} must be >= 0 (0: never), got {getattr(t, name)}")
    if t.lr_scheduler not in ("cosine", "constant", "constant_with_warmup", "linear"):
        raise ValueError(f"training.lr_scheduler must be cosine|constant|constant_with_warmup|linear, got {t.lr_scheduler!r}")
    if t.precision not in ("fp32", "bf16"):
        raise ValueError(f"training.precision must be fp32 or bf16, got {t.precision!r}")
    if cfg.optimizer.impl not in ("auto", "plain", "foreach", "fused"):
        raise ValueError(f"optimizer.impl must be auto|plain|foreach|fused, got {cfg.optimizer.impl!r}")
    if cfg.checkpoint.topk.mode not in ("auto", "min", "max"):
        raise ValueError(f"checkpoint.topk.mode must be auto|min|max, got {cfg.checkpoint.topk.mode!r}")
    if cfg.task.action_norm not in ("identity", "limits"):
        raise ValueError(f"task.action_norm must be identity or limits, got {cfg.task.action_norm!r}")
    try:
        parse_image_size(cfg.task.image_size)
    except ValueError as e:
        raise ValueError(f"task.image_size: {e}") from None
    _validate_logging(cfg.logging)


def _validate_logging(lg: "LoggingSection") -> None:
    if lg.backend not in BACKENDS:
        raise ValueError(f"logging.backend must be {'|'.join(BACKENDS)}, got {lg.backend!r}")
    if lg.mode not in WANDB_MODES:
        raise ValueError(f"logging.mode must be {'|'.join(WANDB_MODES)}, got {lg.mode!r}")
    for name in ("name", "group", "id"):
        v = getattr(lg, name)
        if v is not None and (not isinstance(v, str) or not v):
            raise ValueError(f"logging.{name} must be a non-empty string or None, got {v!r}")
    if not all(isinstance(t, str) and t for t in lg.tags):
        raise ValueError(f"logging.tags must be a list of non-empty strings, got {lg.tags!r}")


# ---------------------------------------------------------------------- the policy for a dataset
def policy_config_for(cfg: TrainConfig, shape_meta: Mapping[str, Any]) -> PolicyConfig:
    """PolicyConfig: defaults <- cfg.policy overrides, with shape_meta; when the crop was not set and
    the images are not 84x84, the crop keeps the seed's 76/84 ratio."""
    kw: Dict[str, Any] = {}
    sched: Dict[str, Any] = {}
    for k, v in cfg.policy.items():
        if k.startswith("scheduler."):
            sched[k[len("scheduler."):]] = v
        else:
            kw[k] = v
    if sched:
        kw["scheduler"] = SchedulerConfig(**sched)
    rgb = [m["shape"] for m in shape_meta["obs"].values() if m.get("type") == "rgb"]
    if "crop_shape" not in kw and rgb and any(tuple(s[1:]) != (84, 84) for s in rgb):
        h = min(s[1] for s in rgb)
        w = min(s[2] for s in rgb)
        kw["crop_shape"] = (max(1, round(h * 76 / 84)), max(1, round(w * 76 / 84)))
    return PolicyConfig(shape_meta=copy.deepcopy(dict(shape_meta)), **kw)
