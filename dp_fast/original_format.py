"""Read checkpoints written by the original diffusion_policy workspace, without its dependencies.

An original `.ckpt` is a `torch.save` zip (pickled with dill) holding
`{'cfg': omegaconf.DictConfig, 'state_dicts': {'model', 'ema_model', 'optimizer'}, 'pickles': {...}}`.
It is read here with a restricted unpickler: only tensor-rebuild helpers, plain containers and a few
scalar types may be referenced; every `omegaconf.*` class becomes an inert stand-in that only records
its pickled state, and the stand-in tree is then turned into plain dicts/lists/scalars. Neither
omegaconf, hydra, dill nor diffusion_policy is imported, and nothing else in the file can run code.

read_original_policy gives (PolicyConfig, state dict) like policy_file.read_policy_file, for
`dp_fast.load_policy`; nothing is ever written in this format. See docs/checkpoints.md.
"""
from __future__ import annotations

import builtins
import collections
import copy
import importlib
import io
import os
import pickle
import re
import types
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch

from .config import BETA_SCHEDULES, PREDICTION_TYPES, VARIANCE_TYPES, PolicyConfig
from .policy_file import CheckpointError

SUPPORTED_POLICY = ("diffusion_policy.policy.diffusion_transformer_hybrid_image_policy."
                    "DiffusionTransformerHybridImagePolicy")


# ---- restricted unpickling
class _OmegaConfStandIn:
    """Records the state of a pickled omegaconf object; has no behaviour of its own."""

    omegaconf_class = "?"

    def __init__(self, *args, **kwargs):
        self.__dict__["_init_args"] = (args, kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict_state, slot_state) form
            state = {**(state[0] or {}), **(state[1] or {})}
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __repr__(self):
        return f"<stand-in omegaconf {self.omegaconf_class}>"


_STAND_INS: Dict[str, type] = {}


def _stand_in(module: str, name: str) -> type:
    key = f"{module}.{name}"
    if key not in _STAND_INS:
        _STAND_INS[key] = type(name, (_OmegaConfStandIn,), {"omegaconf_class": key, "__module__": __name__})
    return _STAND_INS[key]


# dill pickles builtin types as `dill._dill._load_type('<name>')`
_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "int", "float", "bool", "str", "bytes",
             "bytearray", "complex", "slice", "range")
_DILL_TYPES = {**{n: getattr(builtins, n) for n in _BUILTINS}, "object": object, "NoneType": type(None)}


def _dill_load_type(name):
    if name not in _DILL_TYPES:
        raise CheckpointError(f"checkpoint pickle asks dill for type {name!r}, which is not allowed")
    return _DILL_TYPES[name]


# module -> names a checkpoint may reference (torch handles `torch.*Storage` itself)
_ALLOWED = {
    "builtins": _BUILTINS,
    "collections": ("OrderedDict", "defaultdict"),
    "_codecs": ("encode",),
    "typing": ("Any", "Dict", "List", "Tuple", "Optional", "Union"),
    "torch._utils": ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                     "_rebuild_parameter_with_state"),
    "torch._tensor": ("_rebuild_from_type_v2",),
    "torch.nn.parameter": ("Parameter",),
    "torch": ("Size", "Tensor", "device"),
    "numpy.core.multiarray": ("_reconstruct", "scalar"),
    "numpy._core.multiarray": ("_reconstruct", "scalar"),
    "numpy": ("ndarray", "dtype"),
}


def _find_allowed(module: str, name: str):
    module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)  # protocol-2 names
    if module == "builtins":
        name = {"long": "int", "unicode": "str"}.get(name, name)  # Python 2 type names in protocol 2
    if module.split(".")[0] == "omegaconf":
        return _stand_in(module, name)
    if module in ("dill._dill", "dill.dill") and name == "_load_type":
        return _dill_load_type
    if name in _ALLOWED.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                               torch.dtype)):
        return getattr(importlib.import_module(module), name)
    raise CheckpointError(f"checkpoint pickle references the global '{module}.{name}', which dp_fast does not "
                          f"allow (only tensors, plain containers and omegaconf configs are accepted)")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return _find_allowed(module, name)


def _restricted_load(file, **kwargs):
    return _RestrictedUnpickler(file, **kwargs).load()


def _restricted_loads(data, **kwargs):
    return _restricted_load(io.BytesIO(data), **kwargs)


# a module-like object for torch.load(pickle_module=...): torch subclasses `.Unpickler` and keeps
# its own handling of `torch.*Storage` names before our find_class is consulted.
restricted_pickle = types.ModuleType("dp_fast_restricted_pickle")
restricted_pickle.Unpickler = _RestrictedUnpickler
restricted_pickle.load = _restricted_load
restricted_pickle.loads = _restricted_loads
restricted_pickle.UnpicklingError = pickle.UnpicklingError


def to_plain(obj: Any) -> Any:
    """Stand-in omegaconf tree (or plain containers) -> plain dicts / lists / scalars."""
    if isinstance(obj, _OmegaConfStandIn):
        state = obj.__dict__
        if "_content" in state:  # DictConfig / ListConfig (None, "???" or an interpolation stay as is)
            content = state["_content"]
            if isinstance(content, dict):
                return {k: to_plain(v) for k, v in content.items()}
            if isinstance(content, (list, tuple)):
                return [to_plain(v) for v in content]
            return content
        if "_val" in state:  # value nodes
            return to_plain(state["_val"])
        raise CheckpointError(f"cannot convert pickled {obj.omegaconf_class} (state keys {sorted(state)})")
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


# ---- reading
@dataclass
class OriginalCheckpoint:
    cfg: Dict[str, Any]
    state_dicts: Dict[str, Any]
    policy_target: str
    use_ema: bool = False
    global_step: Optional[int] = None
    epoch: Optional[int] = None
    path: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def weights_name(self) -> str:
        """'ema_model' when cfg.training.use_ema is set and present, else 'model'."""
        return "ema_model" if self.use_ema and "ema_model" in self.state_dicts else "model"

    def policy_state_dict(self) -> "collections.OrderedDict":
        """The weights evaluation would use, with canonical dp_fast names."""
        if self.weights_name not in self.state_dicts:
            raise CheckpointError(f"{self.path}: state_dicts has no '{self.weights_name}' entry "
                                  f"(has {sorted(self.state_dicts)})")
        return map_original_state_dict(self.state_dicts[self.weights_name])


def read_original_checkpoint(path, map_location="cpu") -> OriginalCheckpoint:
    """Read an original diffusion_policy workspace `.ckpt` (needs only torch)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    size = os.path.getsize(path)
    expected = "an original diffusion_policy workspace .ckpt (a torch.save zip archive)"
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} ({size} bytes) is not a zip archive, or is truncated; expected {expected}")
    _verify_zip(path, size, expected)
    try:
        payload = torch.load(path, map_location=map_location, pickle_module=restricted_pickle, weights_only=False)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except Exception as e:  # zip/CRC/pickle errors of a corrupt file
        raise CheckpointError(f"{path} ({size} bytes) could not be read as {expected}; the file may be "
                              f"corrupt: {type(e).__name__}: {e}") from e
    if not isinstance(payload, dict) or "cfg" not in payload or "state_dicts" not in payload:
        found = sorted(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a workspace checkpoint: expected a dict with 'cfg' and "
                              f"'state_dicts', found {found}")
    cfg = to_plain(payload["cfg"])
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: 'cfg' is not a mapping (found {type(cfg).__name__})")
    state_dicts = payload["state_dicts"]
    if not isinstance(state_dicts, dict):
        raise CheckpointError(f"{path}: 'state_dicts' is not a mapping (found {type(state_dicts).__name__})")
    target = _check_target(cfg, path)
    training = cfg.get("training") or {}
    ck = OriginalCheckpoint(cfg=cfg, state_dicts=dict(state_dicts), policy_target=target,
                            use_ema=bool(training.get("use_ema", False)), path=path)
    pickles = payload.get("pickles")
    for key, blob in (pickles.items() if isinstance(pickles, dict) else ()):
        try:  # dill bytes of simple values; decoded by the same restricted unpickler
            ck.extra[key] = _restricted_loads(blob) if isinstance(blob, (bytes, bytearray)) else blob
        except Exception:
            continue
    for key in ("global_step", "epoch"):
        value = ck.extra.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            setattr(ck, key, value)
    return ck


def read_original_policy(path) -> Tuple[PolicyConfig, "collections.OrderedDict"]:
    """(config, state dict) of the policy an original checkpoint holds: the config built from its cfg,
    the EMA weights when cfg.training.use_ema is set, keys renamed to dp_fast's."""
    ck = read_original_checkpoint(path)
    return PolicyConfig(**policy_config_from_original(ck.cfg)), ck.policy_state_dict()


def _verify_zip(path: str, size: int, expected: str) -> None:
    """Check every member's CRC-32 (torch.load does not), so corrupt tensor bytes are not loaded silently."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if not any(i.filename.endswith("data.pkl") for i in infos):
                raise CheckpointError(f"{path} ({size} bytes) is a zip archive without a data.pkl record; "
                                      f"expected {expected}")
            for info in infos:
                if info.CRC == 0 and info.file_size:  # written with torch's CRC-32 computation disabled
                    continue
                with zf.open(info) as f:
                    while f.read(1 << 22):
                        pass
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path} ({size} bytes) is a damaged zip archive ({type(e).__name__}: {e}); "
                              f"expected {expected}") from e


def _check_target(cfg: Dict[str, Any], where: str = "cfg") -> str:
    policy = cfg.get("policy")
    target = policy.get("_target_") if isinstance(policy, dict) else None
    if target != SUPPORTED_POLICY:
        raise CheckpointError(f"{where}: checkpoint policy class is {target!r}; dp_fast supports only "
                              f"{SUPPORTED_POLICY!r}")
    return target


# ---- config
# constructor defaults of the original policy and of diffusers' schedulers, for keys a cfg omits
_POLICY_DEFAULTS = dict(num_inference_steps=None, crop_shape=(76, 76), obs_encoder_group_norm=False,
                        eval_fixed_crop=False, n_layer=8, n_cond_layers=0, n_head=4, n_emb=256,
                        p_drop_emb=0.0, p_drop_attn=0.3, causal_attn=True, time_as_cond=True,
                        obs_as_cond=True, pred_action_steps_only=False)
_SCHED_DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                       variance_type="fixed_small", clip_sample=True, prediction_type="epsilon")
_DDIM_DEFAULTS = dict(set_alpha_to_one=True, steps_offset=0)
_SCHED_FIXED = {"trained_betas": None, "thresholding": False, "rescale_betas_zero_snr": False,
                "timestep_spacing": "leading"}


def _unsupported(key: str, value: Any, why: str) -> CheckpointError:
    return CheckpointError(f"unsupported original setting {key}={value!r}: {why}")


def policy_config_from_original(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """dp_fast PolicyConfig keyword arguments from an original workspace cfg (plain dict)."""
    _check_target(cfg)
    pol = cfg["policy"]
    shape_meta = pol.get("shape_meta") or cfg.get("shape_meta")
    if not isinstance(shape_meta, dict) or "obs" not in shape_meta or "action" not in shape_meta:
        raise CheckpointError(f"cfg has no usable shape_meta (policy.shape_meta / shape_meta): {shape_meta!r}")
    shape_meta = copy.deepcopy(shape_meta)
    for key, meta in shape_meta["obs"].items():
        kind = meta.get("type", "low_dim")
        if kind not in ("rgb", "low_dim"):
            raise _unsupported(f"shape_meta.obs.{key}.type", kind, "dp_fast supports 'rgb' and 'low_dim' only")
    out: Dict[str, Any] = {"shape_meta": shape_meta}
    for key in ("horizon", "n_action_steps", "n_obs_steps"):
        if key not in pol:
            raise CheckpointError(f"cfg.policy has no '{key}'")
        out[key] = int(pol[key])
    for key, default in _POLICY_DEFAULTS.items():
        out[key] = pol.get(key, default)
    if out["crop_shape"] is not None:
        out["crop_shape"] = tuple(int(v) for v in out["crop_shape"])
    if not out["obs_encoder_group_norm"]:
        raise _unsupported("policy.obs_encoder_group_norm", out["obs_encoder_group_norm"],
                           "dp_fast implements the GroupNorm encoder only (False means BatchNorm)")
    out["crop_mode"] = "original"
    out["scheduler"] = _scheduler_from_original(pol)
    return out


def _scheduler_from_original(pol: Dict[str, Any]) -> Dict[str, Any]:
    sched = pol.get("noise_scheduler")
    if not isinstance(sched, dict):
        raise CheckpointError(f"cfg.policy.noise_scheduler is missing or not a mapping: {sched!r}")
    target = str(sched.get("_target_", ""))
    if target.endswith(".DDPMScheduler"):
        kind, defaults = "ddpm", dict(_SCHED_DEFAULTS)
    elif target.endswith(".DDIMScheduler"):
        kind, defaults = "ddim", {**_SCHED_DEFAULTS, **_DDIM_DEFAULTS}
    else:
        raise _unsupported("policy.noise_scheduler._target_", target, "only DDPMScheduler and DDIMScheduler")
    out: Dict[str, Any] = {"kind": kind, **{k: sched.get(k, d) for k, d in defaults.items()}}
    if "clip_sample_range" in sched:
        out["clip_sample_range"] = sched["clip_sample_range"]
    if pol.get("eta") is not None:  # the original passes extra policy kwargs to scheduler.step
        out["eta"] = float(pol["eta"])
    for key, allowed in (("variance_type", VARIANCE_TYPES), ("prediction_type", PREDICTION_TYPES),
                         ("beta_schedule", BETA_SCHEDULES)):
        if out[key] not in allowed:
            raise _unsupported(f"policy.noise_scheduler.{key}", out[key], f"dp_fast supports {list(allowed)}")
    for key, ok in _SCHED_FIXED.items():  # options of newer diffusers that dp_fast does not implement
        if key in sched and sched[key] != ok:
            raise _unsupported(f"policy.noise_scheduler.{key}", sched[key], f"only {ok!r} is supported")
    for key, typ in (("num_train_timesteps", int), ("steps_offset", int), ("beta_start", float),
                     ("beta_end", float), ("clip_sample_range", float)):
        if key in out:
            out[key] = typ(out[key])
    return out


# ---- state dict
# robomimic exposes each camera's backbone / pool twice: as `.backbone`/`.pool` and as `.nets.0`/`.nets.1`
_ALIAS = re.compile(r"^(obs_encoder\.obs_nets\.[^.]+)\.nets\.([01])\.(.+)$")


def _same_value(a, b) -> bool:
    if a is b:
        return True
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return False


def map_original_state_dict(sd) -> "collections.OrderedDict[str, Any]":
    """Original policy state dict -> dp_fast names: drop `_dummy_variable`s and robomimic aliases."""
    out = collections.OrderedDict()
    for key, value in sd.items():
        if key == "_dummy_variable" or key.endswith("._dummy_variable"):
            continue
        m = _ALIAS.match(key)
        if m is None:
            out[key] = value
            continue
        canonical = f"{m.group(1)}.{'backbone' if m.group(2) == '0' else 'pool'}.{m.group(3)}"
        if canonical in sd:
            if not _same_value(value, sd[canonical]):
                raise CheckpointError(f"state dict keys '{key}' and '{canonical}' are aliases of one tensor "
                                      f"but hold different values")
        else:
            out[canonical] = value
    return out
