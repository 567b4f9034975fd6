"""ONNX export of a DiffusionPolicy for runtimes outside Python: `dp_fast.export_onnx` / `dp-fast export`.

Three graphs of the reference math (plain PyTorch traced by torch.onnx's exporter), each for one fixed
batch size, fp32, in eval mode, plus `export.json` saying what each takes and gives:

  encoder.onnx   the observations -> the condition features (B, To, Do): the normalizer, the centre crop,
                 the ResNets and the low-dim passthrough (DiffusionPolicy.prepare_obs + encode_obs).
  denoiser.onnx  (sample (B, T, D), timestep (B,) int64[, cond (B, To, Do)]) -> model output (B, T, D):
                 one evaluation of the transformer, for a host that runs its own K-step loop (the
                 scheduler's step coefficients per iteration are in export.json, `step_table`).
  policy.onnx    the observations + noise (N, B, T, D) -> action (B, n_action_steps, Da) and action_pred:
                 the whole predict_action with its K-step loop unrolled for the policy's K and scheduler.

Inputs are named by the policy's observation keys; each is (B, To, *shape) float32 with images in [0, 1]
(CHW), exactly To frames. The noise input is what predict_action's `noise` argument is (noise[0] the
initial sample, noise[i + 1] the step noise of iteration i), so a runtime that feeds the same standard
normals gets the reference's actions (tests/test_export.py: ONNX Runtime within 1e-4).

Not covered (documented in docs/export.md): other batch sizes (export again), random eval crops
(eval_fixed_crop=False), uint8 images (divide by 255 first), drawing the noise (the runtime's own RNG),
16-bit precision, and the `cpu` / CUDA fast paths (the graphs run the reference math in the runtime).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from .atomic_file import atomic_write
from .load import load_policy
from .ops.ddpm_step import TABLE_COLUMNS

PARTS = ("encoder", "denoiser", "policy")


class ExportError(RuntimeError):
    """The policy (or the request) cannot be exported as asked; the message says why."""


def _obs_specs(policy) -> List[Dict]:
    """[{name, shape (B-less, with To), type}] of the observation inputs, in shape_meta order."""
    to = policy.n_obs_steps
    return [{"name": k, "shape": [to] + [int(s) for s in m["shape"]], "type": m.get("type", "low_dim")}
            for k, m in policy.config.shape_meta["obs"].items()]


class _Encoder(nn.Module):
    """obs tensors (shape_meta order) -> (B, To, Do): prepare_obs's normalization + encode_obs, no checks."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, *obs: torch.Tensor) -> torch.Tensor:
        p = self.policy
        batch = obs[0].shape[0]
        nobs = {}
        for (key, meta), x in zip(p.config.shape_meta["obs"].items(), obs):
            nobs[key] = p.normalizer.normalize_key(key, x.reshape(-1, *[int(s) for s in meta["shape"]]))
        return p.obs_encoder(nobs, crop_backend="reference").reshape(batch, p.n_obs_steps, -1)


class _Denoiser(nn.Module):
    def __init__(self, policy):
        super().__init__()
        self.model = policy.model
        self.with_cond = policy.config.obs_as_cond

    def forward(self, sample, timestep, cond=None):
        return self.model(sample, timestep, cond if self.with_cond else None)


class _Predict(nn.Module):
    """obs tensors + noise -> (action, action_pred): predict_action with the reference K-step loop."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy
        self.encoder = _Encoder(policy)

    def forward(self, *inputs: torch.Tensor):
        p = self.policy
        feats = self.encoder(*inputs[:-1])
        out = p._actions_from_trajectory(p.sample(feats, inputs[-1]))
        return out["action"], out["action_pred"]


def _check_exportable(policy) -> None:
    enc = policy.obs_encoder
    if enc.crop_shape is not None and not enc.eval_fixed_crop:
        raise ExportError("the policy crops at random in eval mode (eval_fixed_crop=False); the export takes the "
                          "centre crop only: set policy.obs_encoder.eval_fixed_crop = True to export that")


def _manifest(policy, batch: int, parts: Sequence[str], files: Dict[str, str]) -> Dict:
    sched, k = policy.noise_scheduler, policy.num_inference_steps
    traj = list(policy.trajectory_shape(batch))
    obs = [dict(s, shape=[batch] + s["shape"], dtype="float32") for s in _obs_specs(policy)]
    cond = [batch, policy.n_obs_steps, policy.obs_feature_dim]
    one = torch.ones(1, policy.action_dim)
    scale = policy.normalizer.normalize_key("action", one) - policy.normalizer.normalize_key("action", 0 * one)
    offset = policy.normalizer.normalize_key("action", 0 * one)
    scale, offset = scale[0], offset[0]
    m = {"format": "dp_fast onnx export", "version": 1, "batch": batch, "files": files,
         "observations": obs,
         "image_range": "float32 in [0, 1], CHW (divide uint8 camera images by 255)",
         "encoder": {"inputs": [o["name"] for o in obs], "output": {"name": "cond", "shape": cond}},
         "denoiser": {"inputs": {"sample": traj, "timestep": [batch]} | ({"cond": cond} if policy.config.obs_as_cond else {}),
                      "output": {"name": "model_output", "shape": traj}},
         "policy": {"inputs": [o["name"] for o in obs] + ["noise"],
                    "noise": {"shape": [policy.noise_draws()] + traj, "dtype": "float32",
                              "meaning": "standard normals; noise[0] the initial sample, noise[noise_plan[i]] "
                                         "the step noise of iteration i (-1: none)"},
                    "outputs": {"action": [batch, policy.n_action_steps, policy.action_dim],
                                "action_pred": traj[:2] + [policy.action_dim]}},
         "scheduler": {"kind": sched.config.kind, "prediction_type": sched.config.prediction_type,
                       "num_inference_steps": k, "timesteps": sched.timesteps(k).tolist(),
                       "noise_plan": list(sched.noise_plan(k)),
                       "step_table_columns": list(TABLE_COLUMNS),
                       "step_table": sched.step_table(k).cpu().tolist()},
         "obs_as_cond": bool(policy.config.obs_as_cond),
         # for a host loop over denoiser.onnx (obs_as_cond only; the inpainting mode's masks are in policy.onnx):
         # action_pred = (x[..., :Da] - offset) / scale, action = action_pred[:, start:start + count]
         "action_unnormalize": {"scale": scale.tolist(), "offset": offset.tolist()},
         "action_steps": {"start": 0 if policy.config.pred_action_steps_only else policy.n_obs_steps - 1,
                          "count": policy.n_action_steps},
         "parts": list(parts)}
    return m


def export_onnx(policy, out_dir, batch: int = 1, parts: Sequence[str] = PARTS, opset: Optional[int] = None,
                overwrite: bool = False) -> Dict[str, Path]:
    """Write the ONNX graphs `parts` (of "encoder", "denoiser", "policy") of `policy` for batch size
    `batch` to folder `out_dir`, with export.json; returns {part: path}. The policy is copied to the CPU
    in eval mode for the export (the caller's policy is not changed). Needs the `onnx` and `onnxscript`
    packages (pip install 'dp-fast[export]')."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise ExportError(f"parts must be a non-empty subset of {list(PARTS)}, got {list(parts)}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ExportError(f"batch must be a positive int, got {batch!r}")
    for mod in ("onnx", "onnxscript"):
        try:
            __import__(mod)
        except ImportError as e:
            raise ExportError(f"the ONNX export needs the '{mod}' package ({e}); pip install 'dp-fast[export]'") \
                from None
    _check_exportable(policy)
    out = Path(out_dir)
    targets = {part: out / f"{part}.onnx" for part in parts}
    existing = [str(p) for p in list(targets.values()) + [out / "export.json"] if p.exists()]
    if existing and not overwrite:
        raise ExportError(f"{existing[0]} exists; pass overwrite=True (--overwrite) to replace the export")
    p = copy.deepcopy(policy).cpu().float().eval()
    specs = _obs_specs(p)
    g = torch.Generator().manual_seed(0)
    obs = tuple(torch.rand((batch, *s["shape"]), generator=g) for s in specs)
    traj = p.trajectory_shape(batch)
    cond = torch.randn(batch, p.n_obs_steps, p.obs_feature_dim, generator=g)
    noise = torch.randn((p.noise_draws(), *traj), generator=g)
    names = [s["name"] for s in specs]
    jobs = {
        "encoder": (_Encoder(p), obs, names, ["cond"]),
        "denoiser": (_Denoiser(p), (torch.randn(traj, generator=g), torch.full((batch,), 10, dtype=torch.int64))
                     + ((cond,) if p.config.obs_as_cond else ()),
                     ["sample", "timestep"] + (["cond"] if p.config.obs_as_cond else []), ["model_output"]),
        "policy": (_Predict(p), obs + (noise,), names + ["noise"], ["action", "action_pred"]),
    }
    progs = {}
    quiet = logging.getLogger("torch.onnx")  # its notices of skipped torchvision ops (not a dependency)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for part in parts:  # every graph is built before any file is written
                module, args, in_names, out_names = jobs[part]
                # optimize=False: onnxscript's graph optimizer takes minutes on the unrolled loop (ONNX
                # Runtime and OpenVINO optimize a graph when they load it)
                progs[part] = torch.onnx.export(module.eval(), args, dynamo=True, input_names=in_names,
                                                output_names=out_names, opset_version=opset, verbose=False,
                                                optimize=False)
    finally:
        quiet.setLevel(level)
    for part, prog in progs.items():
        with atomic_write(targets[part], suffix=".tmp.onnx") as tmp:
            prog.save(str(tmp), external_data=False)
    written = dict(targets)
    manifest = _manifest(p, batch, parts, {k: v.name for k, v in written.items()})
    with atomic_write(out / "export.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return written


# ------------------------------------------------------------------------------------------ CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--policy", required=True, help="checkpoint: dp_fast .safetensors or original .ckpt")
    parser.add_argument("--out", required=True, help="folder for the .onnx files and export.json")
    parser.add_argument("--batch", type=int, default=1, help="the batch size the graphs take (fixed)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    return parser


def run(args) -> int:
    policy = load_policy(args.policy, device="cpu", backend="reference")
    t0 = time.perf_counter()
    files = export_onnx(policy, args.out, batch=args.batch, parts=args.parts, overwrite=args.overwrite)
    for part, path in files.items():
        print(f"wrote {path} ({path.stat().st_size / 2 ** 20:.1f} MiB)")
    print(f"wrote {Path(args.out) / 'export.json'}; {time.perf_counter() - t0:.0f} s "
          f"(K = {policy.num_inference_steps} {policy.config.scheduler.kind} steps unrolled in policy.onnx)")
    return 0
