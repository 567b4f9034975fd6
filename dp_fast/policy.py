"""DiffusionPolicy: normalize -> encode observations -> denoise an action chunk -> unnormalize.

The reference path is plain PyTorch and follows the original DiffusionTransformerHybridImagePolicy
(docs/numerics.md). What runs where is decided once per device by dp_fast.backends.resolve and built by
dp_fast.sampling.make_sampler (docs/architecture.md, "predict_action"). Three trajectory modes, as the original:
  * obs_as_cond (default): observation features are condition tokens; the model denoises (B, horizon, Da).
  * obs_as_cond + pred_action_steps_only: the model denoises only the executed (B, n_action_steps, Da).
  * obs_as_cond=False: inpainting over (B, horizon, Da + Do), the first n_obs_steps rows' observation
    features fixed by a mask at every step.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .backends import ENCODERS, SAMPLERS, Resolution, op_backends, policy_backend, resolve
from .config import PolicyConfig
from .models.transformer import TransformerForDiffusion
from .models.vision import ObsEncoder
from .models.vision_onednn import OnednnEncoder, native_bf16
from .normalizer import LinearNormalizer, image_range_field
from .ops import add_noise
from .policy_file import write_policy_file
from .profiling import nvtx_range
from .sampling import ReferenceSampler, check_precision, make_sampler
from .sampling.cpu import isa
from .schedulers import NoiseScheduler


class ObsError(ValueError):
    """Bad observation or noise input to predict_action / compute_loss."""


class DiffusionPolicy(nn.Module):
    def __init__(self, config: Optional[PolicyConfig] = None, backend: Optional[str] = None,
                 precision: str = "fp32"):
        """backend: "reference", "cpu", "cuda", "triton" or "auto" (None: $DP_FAST_BACKEND, then "auto");
        a named backend this machine lacks raises BackendUnavailable here (docs/architecture.md, "Backends").
        precision: inference precision of the denoiser on the fast samplers, "fp32" (default; the
        reference's actions), "bf16" or "fp16" (see set_precision)."""
        super().__init__()
        config = config or PolicyConfig()
        self.config = config
        self.normalizer = LinearNormalizer()
        self.obs_encoder = ObsEncoder(config.shape_meta, config.crop_shape, config.crop_mode,
                                      vision_width=config.vision_width, eval_fixed_crop=config.eval_fixed_crop)
        self.obs_feature_dim = self.obs_encoder.output_dim
        self.action_dim = config.action_dim
        da, do = self.action_dim, self.obs_feature_dim
        in_dim = da if config.obs_as_cond else da + do
        self.model = TransformerForDiffusion(
            input_dim=in_dim, output_dim=in_dim, horizon=config.horizon, n_obs_steps=config.n_obs_steps,
            cond_dim=do if config.obs_as_cond else 0, n_layer=config.n_layer, n_head=config.n_head,
            n_emb=config.n_emb, p_drop_emb=config.p_drop_emb, p_drop_attn=config.p_drop_attn,
            causal_attn=config.causal_attn, time_as_cond=config.time_as_cond,
            n_cond_layers=config.n_cond_layers)
        self.noise_scheduler = NoiseScheduler(config.scheduler)
        self._init_normalizer()
        policy_backend(backend, "cpu")  # an unknown or unavailable named backend fails here, not at first use
        self._backend_request = backend
        self._resolution: Optional[Resolution] = None  # resolved for the policy's device, on first use
        self._sampler = None  # (weights key, sampler), rebuilt when the resolution or the weights change
        self._onednn: Optional[OnednnEncoder] = None  # the "onednn" encoder (packs its weights itself)
        self._loss_ops: Dict[tuple, Dict[str, str]] = {}  # (backend request, device) -> op backends of compute_loss
        self.precision = "fp32"
        self.set_precision(precision)

    # ------------------------------------------------------------------ properties
    @property
    def horizon(self) -> int:
        return self.config.horizon

    @property
    def n_obs_steps(self) -> int:
        return self.config.n_obs_steps

    @property
    def n_action_steps(self) -> int:
        return self.config.n_action_steps

    @property
    def num_inference_steps(self) -> int:
        return self.config.inference_steps

    @property
    def backend(self) -> str:
        """The backend this policy runs on its current device (dp_fast.backends.policy_backend)."""
        return policy_backend(self._backend_request, self.device)

    @property
    def resolution(self) -> Resolution:
        """What runs on the policy's device (backend, sampler, each op): resolved once, again only after the
        policy moved to another device."""
        r = self._resolution
        if r is None or r.device != self.device:
            r = self._resolution = resolve(self._backend_request, self.device)
            self._sampler = None
        return r

    @property
    def device(self) -> torch.device:
        return self.model.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.head.weight.dtype

    def trajectory_shape(self, batch: int):
        """(B, T, D) of the denoised trajectory for this policy's mode."""
        c = self.config
        if not c.obs_as_cond:
            return (batch, c.horizon, self.action_dim + self.obs_feature_dim)
        t = c.n_action_steps if c.pred_action_steps_only else c.horizon
        return (batch, t, self.action_dim)

    # ------------------------------------------------------------------ normalizer
    def _init_normalizer(self):
        """Identity for low-dim keys and actions, [0,1] -> [-1,1] for images, until set_normalizer."""
        for key, meta in self.config.shape_meta["obs"].items():
            if meta.get("type", "low_dim") == "rgb":
                self.normalizer.set_field(key, *image_range_field())
            else:
                n = int(meta["shape"][-1])
                self.normalizer.set_field(key, torch.ones(n), torch.zeros(n))
        self.normalizer.set_field("action", torch.ones(self.action_dim), torch.zeros(self.action_dim))

    def set_normalizer(self, normalizer: LinearNormalizer) -> None:
        missing = [k for k in list(self.config.shape_meta["obs"]) + ["action"] if k not in normalizer]
        if missing:
            raise KeyError(f"normalizer lacks fields {missing}")
        self.normalizer.load_state_dict(normalizer.state_dict())

    # ------------------------------------------------------------------ input checks
    def prepare_obs(self, obs: Mapping[str, torch.Tensor], steps: Optional[int] = None):
        """Check obs; return ({key: normalized (B * steps, ...)} of the first `steps` frames, B).

        obs[key]: (B, To', *shape) with To' >= steps; images (B, To', C, H, W) uint8 or float in [0, 1].
        A key may also be given under its dataset name (shape_meta's "dataset_key", e.g. LeRobot's
        `observation.images.wrist` for the policy key `observation_images_wrist`).
        """
        steps = self.n_obs_steps if steps is None else steps
        if not isinstance(obs, Mapping):
            raise ObsError(f"obs must be a dict of tensors keyed by {list(self.config.shape_meta['obs'])}, "
                           f"got {type(obs).__name__}")
        out, batch = {}, None
        device, dtype = self.device, self.dtype
        for key, meta in self.config.shape_meta["obs"].items():
            # a LeRobot feature whose name is not a valid module name (dots) keeps it as "dataset_key":
            # the observation may come under either name
            name = meta.get("dataset_key", key)
            if key not in obs and name not in obs:
                also = f" or '{name}'" if name != key else ""
                raise ObsError(f"obs is missing key '{key}'{also} (expected (B, >={steps}, "
                               f"{', '.join(map(str, meta['shape']))})); given keys: {sorted(obs)}")
            x = obs[key] if key in obs else obs[name]
            shape = tuple(int(s) for s in meta["shape"])
            is_rgb = meta.get("type", "low_dim") == "rgb"
            if not torch.is_tensor(x):
                raise ObsError(f"obs['{key}'] must be a torch.Tensor, got {type(x).__name__}")
            if x.ndim != 2 + len(shape) or tuple(x.shape[2:]) != shape or x.shape[1] < steps:
                raise ObsError(f"obs['{key}'] must have shape (B, >={steps}, {', '.join(map(str, shape))}), "
                               f"got {tuple(x.shape)}")
            if batch is None:
                batch = x.shape[0]
            elif x.shape[0] != batch:
                raise ObsError(f"obs['{key}'] has batch size {x.shape[0]}, other keys have {batch}")
            allowed = "uint8 or floating" if is_rgb else "floating"
            if not (x.is_floating_point() or (is_rgb and x.dtype == torch.uint8)):
                raise ObsError(f"obs['{key}'] must be {allowed}, got dtype {x.dtype}")
            x = x[:, :steps].to(device)
            if x.dtype == torch.uint8:
                x = x.to(dtype) / 255.0
            else:
                x = x.to(dtype)
            # A NaN check on CUDA would synchronise with the host; check CPU tensors only.
            if x.device.type == "cpu" and not torch.isfinite(x).all():
                raise ObsError(f"obs['{key}'] contains NaN or Inf values")
            out[key] = self.normalizer.normalize_key(key, x.reshape(-1, *shape))
        return out, batch

    def _check_noise(self, noise: torch.Tensor, batch: int) -> torch.Tensor:
        want = (self.noise_draws(),) + self.trajectory_shape(batch)
        if not torch.is_tensor(noise) or tuple(noise.shape) != want:
            got = tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__
            raise ObsError(f"noise must have shape (K, B, T, D) = {want} (K = noise_draws(): "
                           f"num_inference_steps, or one more where the last step draws noise too), got {got}")
        if not noise.is_floating_point():
            raise ObsError(f"noise must be floating point, got dtype {noise.dtype}")
        return noise.to(self.device, self.dtype)

    # ------------------------------------------------------------------ inference
    def encode_obs(self, nobs: Dict[str, torch.Tensor], batch: int,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B * To, ...) normalized obs -> (B, To, Do) features (crops on the resolved random_crop backend;
        without grad, the ResNets on the resolved encoder: oneDNN with packed weights under "cpu")."""
        res = self.resolution
        crop_backend = res.ops["random_crop"]
        if res.encoder == "onednn" and not torch.is_grad_enabled():
            dtype = self._encoder_dtype()
            if self._onednn is None or self._onednn.encoder is not self.obs_encoder or self._onednn.dtype != dtype:
                self._onednn = OnednnEncoder(self.obs_encoder, dtype)
            feats = self._onednn.run(nobs, generator, crop_backend)
        else:
            feats = self.obs_encoder(nobs, generator=generator, crop_backend=crop_backend)
        return feats.reshape(batch, self.n_obs_steps, -1)

    def _encoder_dtype(self) -> torch.dtype:
        """The oneDNN encoder's convolution dtype: bf16 for precision="bf16" where oneDNN has native bf16."""
        return torch.bfloat16 if self.precision == "bf16" and native_bf16() else torch.float32

    @torch.no_grad()
    def predict_action(self, obs: Mapping[str, torch.Tensor], noise: Optional[torch.Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """obs: {key: (B, To', ...)} -> {"action": (B, n_action_steps, Da), "action_pred": (B, T, Da)}.

        noise: optional (K, B, T, D) with noise[0] the initial sample and noise[i + 1] the step noise
        of loop iteration i (the original's draw order); otherwise drawn from `generator` (or the
        global RNG) in that same order.
        """
        nobs, batch = self.prepare_obs(obs)
        if noise is not None:
            noise = self._check_noise(noise, batch)
        with nvtx_range("encoder"):
            feats = self.encode_obs(nobs, batch, generator)
        with nvtx_range("sample"):
            traj = self._run_sampler(self.sampler, feats, noise, generator)
        return self._actions_from_trajectory(traj)

    def set_precision(self, precision) -> None:
        """Inference precision of the denoiser: "fp32" (default), "bf16" or "fp16" (or torch dtypes).

        fp32 gives the reference's actions. bf16 / fp16 apply to the fast samplers only.
        `cpu` backend: the matmul weights are stored in 16 bits; with bf16 on a CPU with AMX-BF16 or
        AVX512_BF16 the matmuls multiply bf16 inputs with fp32 accumulation (AMX tiles / vdpbf16ps) and
        the oneDNN encoder's convolutions run in bf16 (fp32 between them), elsewhere the arithmetic stays
        fp32 (describe_backends() says which); LayerNorm, softmax and the scheduler step are fp32 always.
        CUDA (`cuda` / `triton`): the denoiser runs in that dtype (tensor cores), the scheduler step and
        the observation encoder in fp32. The `reference` backend is the fp32 ground truth and rejects
        the others.
        """
        name = check_precision(precision)
        if name != "fp32" and self.backend == "reference":
            raise ValueError(f"precision={name!r} needs a fast sampler backend ('cpu', 'cuda', 'triton' or an "
                             f"'auto' that resolves to one); this policy's backend is 'reference', the fp32 "
                             f"ground truth")
        self.precision = name
        self._sampler = None

    def _weights_key(self):
        """Changes whenever a denoiser parameter is replaced or modified in place (optimizer step,
        load_state_dict, .to()), so that packed weights and caches are rebuilt."""
        return tuple((p.data_ptr(), p._version, p.device) for p in self.model.parameters())

    @property
    def sampler(self):
        """The K-step loop predict_action runs (dp_fast.sampling), for the resolved backend: built on first
        use and rebuilt when the weights change (the fast samplers pack them; the reference sampler holds only
        the current model). A GraphSampler records its capture cost per key in `capture_seconds`."""
        res = self.resolution
        if res.sampler == "reference":
            return ReferenceSampler(self.model)   # holds nothing but the (current) model
        key = self._weights_key()
        if self._sampler is None or self._sampler[0] != key:
            self._sampler = (key, make_sampler(res.sampler, self.model, self.precision, res.ops["ddpm_step"]))
        return self._sampler[1]

    def _run_sampler(self, sampler, feats: torch.Tensor, noise: Optional[torch.Tensor],
                     generator: Optional[torch.Generator]) -> torch.Tensor:
        cond, data, mask = self._condition(feats)
        sched = self.noise_scheduler
        if sched.device != feats.device:
            sched.to(feats.device)
        return sampler.sample(sched, self.num_inference_steps, self.trajectory_shape(feats.shape[0]), cond, noise,
                              generator, None if mask is None else (data, mask))

    def describe_backends(self) -> Dict[str, str]:
        """What each piece of predict_action resolved to on this policy's device: the policy backend, the
        sampler (and its implementation), the precision, and each op of dp_fast.backends.OPS."""
        res = self.resolution
        out = {"backend": res.backend, "device": str(res.device), "precision": self.precision, "sampler": res.sampler,
               "sampler_impl": SAMPLERS[res.sampler], "obs_encoder": f"{res.encoder}: {ENCODERS[res.encoder]}"}
        if res.encoder == "onednn":
            out["obs_encoder"] += " [bf16 convolutions]" if self._encoder_dtype() == torch.bfloat16 else " [fp32]"
        if res.sampler == "cpu":
            out["sampler_impl"] += f" [{isa()}, {self.sampler.arithmetic}]"
        out.update(res.ops)
        return out

    def _condition(self, feats: torch.Tensor):
        """Returns (cond for the transformer, inpainting data, inpainting mask)."""
        if self.config.obs_as_cond:
            return feats, None, None
        b, to, do = feats.shape
        shape = self.trajectory_shape(b)
        data = torch.zeros(shape, device=feats.device, dtype=feats.dtype)
        mask = torch.zeros(shape, device=feats.device, dtype=torch.bool)
        data[:, :to, self.action_dim:] = feats
        mask[:, :to, self.action_dim:] = True
        return None, data, mask

    def noise_draws(self) -> int:
        """Leading size of `noise`: K = num_inference_steps, or K + 1 where the last iteration draws step
        noise as well (DDIM with eta > 0; DDPM with steps_offset > 0, whose last timestep is then > 0)."""
        k = self.num_inference_steps
        return max(k, self.noise_scheduler.num_noise(k))

    def sample(self, feats: torch.Tensor, noise: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The reference K-step denoising loop, whatever the backend. feats: (B, To, Do) -> normalized
        trajectory (B, T, D). Noise as in predict_action (the scheduler's noise plan)."""
        return self._run_sampler(ReferenceSampler(self.model), feats, noise, generator)

    def _actions_from_trajectory(self, traj: torch.Tensor) -> Dict[str, torch.Tensor]:
        action_pred = self.normalizer.unnormalize_key("action", traj[..., :self.action_dim])
        if self.config.pred_action_steps_only:
            action = action_pred
        else:
            start = self.n_obs_steps - 1
            action = action_pred[:, start:start + self.n_action_steps]
        return {"action": action, "action_pred": action_pred}

    # ------------------------------------------------------------------ training
    def compute_loss(self, batch: Mapping, noise: Optional[torch.Tensor] = None,
                     timesteps: Optional[torch.Tensor] = None,
                     crop_offsets: Optional[Mapping[str, torch.Tensor]] = None,
                     generator: Optional[torch.Generator] = None, backend: Optional[str] = None) -> torch.Tensor:
        """Denoising loss of the original. batch: {"obs": {key: (B, To', ...)}, "action": (B, T, Da)}.

        noise / timesteps / crop_offsets ({key: (B * To, 2) int64 [top, left]}) may be injected; otherwise
        drawn from `generator` in the order crops (shape_meta order), noise, timesteps. backend: where the
        crop and the forward noising run (dp_fast.ops random_crop / add_noise); None: the policy's resolved
        ops; "reference": plain PyTorch (add_noise_ref: diffusers' formula). Every backend draws
        the same random numbers, so the loss agrees across backends up to float rounding (tested).
        """
        ops = self.resolution.ops if backend is None else self._ops_for(backend)
        c = self.config
        if "obs" not in batch or "action" not in batch:
            raise ObsError(f"batch must have keys 'obs' and 'action', got {sorted(batch)}")
        act = batch["action"]
        want = (c.horizon, self.action_dim)
        if not torch.is_tensor(act) or act.ndim != 3 or tuple(act.shape[1:]) != want:
            got = tuple(act.shape) if torch.is_tensor(act) else type(act).__name__
            raise ObsError(f"batch['action'] must have shape (B, {want[0]}, {want[1]}), got {got}")
        bsz = act.shape[0]
        steps = c.n_obs_steps if c.obs_as_cond else c.horizon
        nobs, nb = self.prepare_obs(batch["obs"], steps)
        if nb != bsz:
            raise ObsError(f"batch obs have batch size {nb}, batch['action'] has {bsz}")
        nact = self.normalizer.normalize_key("action", act.to(self.device, self.dtype))
        draws = self.loss_draws(bsz, generator, crop_offsets=crop_offsets, noise=noise, timesteps=timesteps)
        feats = self.obs_encoder(nobs, draws["crop_offsets"], generator, ops["random_crop"]).reshape(bsz, steps, -1)
        cond, traj, cmask = None, nact, None
        if c.obs_as_cond:
            cond = feats
            if c.pred_action_steps_only:
                start = c.n_obs_steps - 1
                traj = nact[:, start:start + c.n_action_steps]
        else:
            traj = torch.cat([nact, feats], dim=-1).detach()
            cmask = torch.zeros_like(traj, dtype=torch.bool)
            cmask[:, :c.n_obs_steps, self.action_dim:] = True
        noise, timesteps = draws["noise"], draws["timesteps"]
        if tuple(noise.shape) != tuple(traj.shape):
            raise ObsError(f"noise must have shape {tuple(traj.shape)} (the trajectory), got {tuple(noise.shape)}")
        sched = self.noise_scheduler.to(traj.device)
        noisy = add_noise(traj.contiguous(), noise.contiguous(), timesteps, sched.alphas_cumprod,
                          backend=ops["add_noise"])
        if cmask is not None:
            noisy = torch.where(cmask, traj, noisy)
        pred = self.model(noisy, timesteps, cond)
        target = noise if c.scheduler.prediction_type == "epsilon" else traj
        loss = F.mse_loss(pred, target, reduction="none")
        if cmask is not None:
            loss = loss * (~cmask).to(loss.dtype)
        return loss.reshape(bsz, -1).mean(1).mean()

    def loss_draws(self, bsz: int, generator: Optional[torch.Generator] = None,
                   crop_offsets: Optional[Mapping[str, torch.Tensor]] = None,
                   noise: Optional[torch.Tensor] = None,
                   timesteps: Optional[torch.Tensor] = None) -> Dict[str, Any]:
        """The random numbers of compute_loss for a batch of `bsz`, those not given drawn from `generator`
        in compute_loss's order: the crops (rgb keys in shape_meta order, (bsz * steps, 2) each, when the
        encoder draws them), the noise (trajectory_shape), the timesteps (bsz,). Row i (crops: rows
        i * steps ...) belongs to sample i, so the draws of a batch can be split by sample (the DDP trainer
        draws a global batch's and gives each rank its slice)."""
        c, enc = self.config, self.obs_encoder
        crops = dict(crop_offsets or {})
        if enc.draws_crops():
            steps = c.n_obs_steps if c.obs_as_cond else c.horizon
            for key, meta in c.shape_meta["obs"].items():
                if meta.get("type", "low_dim") == "rgb" and key not in crops:
                    crops[key] = enc.random_offsets(bsz * steps, tuple(meta["shape"][1:]), generator, self.device)
        if noise is None:
            noise = torch.randn(self.trajectory_shape(bsz), generator=generator, device=self.device, dtype=self.dtype)
        if timesteps is None:
            timesteps = torch.randint(0, c.scheduler.num_train_timesteps, (bsz,), generator=generator,
                                      device=self.device)
        return {"crop_offsets": crops or None, "noise": noise, "timesteps": timesteps}

    def _ops_for(self, backend: str) -> Dict[str, str]:
        """The op backends of `backend` on the policy's device, resolved once per (backend, device)."""
        key = (backend, self.device)
        if key not in self._loss_ops:
            self._loss_ops[key] = op_backends(policy_backend(backend, self.device), self.device)
        return self._loss_ops[key]

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write this policy (config, weights, normalizer) as a dp_fast .safetensors file, atomically."""
        write_policy_file(path, self.config, self.state_dict())

    def get_optim_groups(self, transformer_weight_decay: float, obs_encoder_weight_decay: float):
        """AdamW groups of the original: decay on transformer Linear / attention weights, none on
        biases, LayerNorm weights and position embeddings; obs encoder in its own group."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = self.model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else self.model
            if leaf.endswith("bias") or isinstance(owner, nn.LayerNorm) or leaf in ("pos_emb", "cond_pos_emb"):
                no_decay.append(p)
            else:
                decay.append(p)
        return [{"params": decay, "weight_decay": transformer_weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
                {"params": list(self.obs_encoder.parameters()), "weight_decay": obs_encoder_weight_decay}]
