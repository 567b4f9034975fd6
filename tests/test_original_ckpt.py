"""Reading original diffusion_policy workspace checkpoints (../shared/fixtures/dp_variant_ckpt)."""
import copy
import io
import os
import pickle
import re
import sys
import zipfile
from collections import OrderedDict

import pytest
import torch

from dp_fast.config import PolicyConfig
from dp_fast.original_format import (SUPPORTED_POLICY, map_original_state_dict, policy_config_from_original,
                                     read_original_checkpoint)
from dp_fast.policy_file import CheckpointError
from tests.fixtures_path import fixtures_dir


def _key_list(path):
    """keys.txt -> [(key, alias_of or None)]"""
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            key = line.split("\t")[0]
            out.append((key, line.split("ALIAS_OF ")[1].strip() if "ALIAS_OF" in line else None))
    return out


@pytest.fixture(scope="module")
def ck(variant_ckpt):
    return read_original_checkpoint(variant_ckpt)


def _expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        read_original_checkpoint(path)
    msg = str(info.value)
    for frag in fragments:
        assert frag in msg, (frag, msg)
    return msg


# --------------------------------------------------------------------------- reading
def test_reads_without_omegaconf_or_dill(variant_ckpt, monkeypatch):
    for name in list(sys.modules):
        if name.split(".")[0] in ("omegaconf", "dill", "hydra", "diffusion_policy"):
            monkeypatch.setitem(sys.modules, name, None)
    for name in ("omegaconf", "dill", "hydra", "diffusion_policy"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError):
        import omegaconf  # noqa: F401
    ck = read_original_checkpoint(variant_ckpt)
    assert ck.policy_target == SUPPORTED_POLICY
    assert ck.use_ema is True
    assert ck.global_step == 0 and ck.epoch == 0
    assert set(ck.state_dicts) == {"model", "ema_model", "optimizer"}
    assert isinstance(ck.state_dicts["model"], OrderedDict) and len(ck.state_dicts["model"]) == 273


def test_cfg_equals_omegaconf_container(ck, variant_ckpt):
    omegaconf = pytest.importorskip("omegaconf")
    ref = torch.load(variant_ckpt, map_location="cpu", weights_only=False)
    expected = omegaconf.OmegaConf.to_container(ref["cfg"])

    def shape(d):  # key order and value types, recursively
        if isinstance(d, dict):
            return [(k, shape(v)) for k, v in d.items()]
        if isinstance(d, list):
            return [shape(v) for v in d]
        return (type(d).__name__, d)

    assert ck.cfg == expected
    assert shape(ck.cfg) == shape(expected)
    assert list(ck.cfg["policy"]["shape_meta"]["obs"]) == [
        "agentview_image", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos"]
    for name in ("model", "ema_model"):
        got, want = ck.state_dicts[name], ref["state_dicts"][name]
        assert list(got) == list(want)
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_ema_equals_model_and_optimizer_kept(ck):
    model, ema = ck.state_dicts["model"], ck.state_dicts["ema_model"]
    assert list(model) == list(ema)
    assert all(torch.equal(model[k], ema[k]) for k in model)
    opt = ck.state_dicts["optimizer"]
    assert opt["state"] == {} and len(opt["param_groups"]) == 3
    assert [g["weight_decay"] for g in opt["param_groups"]] == [1e-3, 0.0, 1e-6]
    assert ck.weights_name == "ema_model"
    assert len(ck.policy_state_dict()) == 273 - 65 - 3


# --------------------------------------------------------------------------- config
def test_policy_config_from_original(ck):
    kw = policy_config_from_original(ck.cfg)
    assert kw["shape_meta"] == {
        "obs": {"agentview_image": {"shape": [3, 84, 84], "type": "rgb"}, "robot0_eef_pos": {"shape": [3]},
                "robot0_eef_quat": {"shape": [4]}, "robot0_gripper_qpos": {"shape": [2]}},
        "action": {"shape": [7]}}
    expected = dict(horizon=16, n_action_steps=8, n_obs_steps=3, num_inference_steps=100, crop_shape=(76, 76),
                    obs_encoder_group_norm=True, eval_fixed_crop=True, n_layer=4, n_cond_layers=2, n_head=4,
                    n_emb=128, p_drop_emb=0.0, p_drop_attn=0.3, causal_attn=True, time_as_cond=True,
                    obs_as_cond=True, pred_action_steps_only=False, crop_mode="original")
    assert {k: kw[k] for k in expected} == expected
    assert kw["scheduler"] == dict(kind="ddpm", num_train_timesteps=100, beta_start=1e-4, beta_end=0.02,
                                   beta_schedule="squaredcos_cap_v2", variance_type="fixed_small",
                                   clip_sample=True, prediction_type="epsilon")
    config = PolicyConfig(**kw)
    assert config.rgb_keys == ("agentview_image",) and config.action_dim == 7
    # shape_meta falls back to the top-level entry
    cfg = copy.deepcopy(ck.cfg)
    del cfg["policy"]["shape_meta"]
    assert policy_config_from_original(cfg)["shape_meta"] == kw["shape_meta"]


def test_policy_config_ddim(ck):
    cfg = copy.deepcopy(ck.cfg)
    cfg["policy"]["noise_scheduler"] = {
        "_target_": "diffusers.schedulers.scheduling_ddim.DDIMScheduler", "num_train_timesteps": 100,
        "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True,
        "set_alpha_to_one": True, "steps_offset": 0, "prediction_type": "epsilon"}
    cfg["policy"]["eta"] = 0.5
    cfg["policy"]["num_inference_steps"] = 10
    sched = policy_config_from_original(cfg)["scheduler"]
    assert sched["kind"] == "ddim" and sched["eta"] == 0.5 and sched["set_alpha_to_one"] is True
    assert PolicyConfig(**policy_config_from_original(cfg)).inference_steps == 10


@pytest.mark.parametrize("path,value,fragment", [
    (("obs_encoder_group_norm",), False, "obs_encoder_group_norm"),
    (("noise_scheduler", "variance_type"), "fixed_large", "variance_type"),
    (("noise_scheduler", "variance_type"), "learned_range", "variance_type"),
    (("noise_scheduler", "prediction_type"), "v_prediction", "prediction_type"),
    (("noise_scheduler", "_target_"), "diffusers.DPMSolverMultistepScheduler", "noise_scheduler._target_"),
    (("shape_meta", "obs", "robot0_eef_pos", "type"), "depth", "shape_meta.obs.robot0_eef_pos.type"),
    (("_target_",), "diffusion_policy.policy.diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy",
     "DiffusionUnetHybridImagePolicy"),
])
def test_policy_config_rejects_unsupported(ck, path, value, fragment):
    cfg = copy.deepcopy(ck.cfg)
    node = cfg["policy"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(CheckpointError) as info:
        policy_config_from_original(cfg)
    assert fragment in str(info.value) and repr(value).strip("'") in str(info.value)


# --------------------------------------------------------------------------- state dict
def _check_mapping(sd, keys_txt):
    listed = _key_list(keys_txt)
    assert list(sd) == [k for k, _ in listed]
    mapped = map_original_state_dict(sd)
    expected = [k for k, alias in listed if alias is None and not k.endswith("_dummy_variable")]
    assert list(mapped) == expected
    assert not any(re.match(r"obs_encoder\.obs_nets\.[^.]+\.nets\.[01]\.", k) for k in mapped)
    assert any(k.endswith(".nets.3.weight") for k in mapped)
    for key, alias_of in listed:
        if alias_of is not None:
            assert torch.equal(sd[key], mapped[alias_of])
    return mapped


def test_map_variant_state_dict(ck):
    sd = ck.state_dicts["ema_model"]
    mapped = _check_mapping(sd, fixtures_dir() / "dp_variant_ckpt" / "keys.txt")
    assert len(mapped) == 273 - 65 - 3
    for key in ("obs_encoder.obs_nets.agentview_image.backbone.nets.4.0.bn1.weight",
                "obs_encoder.obs_nets.agentview_image.pool.nets.weight",
                "obs_encoder.obs_nets.agentview_image.pool.pos_x",
                "obs_encoder.obs_nets.agentview_image.nets.3.weight",
                "model.decoder.layers.0.self_attn.in_proj_weight", "model.mask",
                "normalizer.params_dict.action.scale"):
        assert key in mapped and mapped[key] is sd[key]


def test_map_reference_state_dict():
    fx = torch.load(fixtures_dir() / "dp_reference" / "fixture.pt", weights_only=True)
    sd = fx["state_dict_fp16"]
    mapped = _check_mapping(sd, fixtures_dir() / "dp_reference" / "keys.txt")
    assert len(mapped) == 463 - 130 - 3


def test_map_alias_only_and_conflict(ck):
    sd = OrderedDict(ck.state_dicts["model"])
    canon = "obs_encoder.obs_nets.agentview_image.backbone.nets.0.weight"
    alias = "obs_encoder.obs_nets.agentview_image.nets.0.nets.0.weight"
    only_alias = OrderedDict((k, v) for k, v in sd.items() if k != canon)
    mapped = map_original_state_dict(only_alias)
    assert canon in mapped and alias not in mapped and mapped[canon] is sd[alias]
    assert set(mapped) == set(map_original_state_dict(sd))
    conflict = OrderedDict(sd)
    conflict[alias] = sd[alias] + 1
    with pytest.raises(CheckpointError) as info:
        map_original_state_dict(conflict)
    assert alias in str(info.value) and canon in str(info.value)


# --------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.ckpt", "not found", "nope.ckpt")
    _expect_error(tmp_path, "not found")


def test_truncated_file(variant_ckpt, tmp_path):
    size = os.path.getsize(variant_ckpt)
    for n in (100, 5_000_000, size - 10):
        bad = tmp_path / f"trunc{n}.ckpt"
        with open(variant_ckpt, "rb") as f:
            bad.write_bytes(f.read(n))
        _expect_error(bad, str(bad), f"{n} bytes", "truncated", "torch.save zip")


def test_corrupt_bytes(variant_ckpt, tmp_path):
    data = variant_ckpt.read_bytes()
    for offset in (300, 60_000, len(data) // 2):  # inside data.pkl, and inside a tensor record
        bad = tmp_path / f"corrupt{offset}.ckpt"
        b = bytearray(data)
        b[offset:offset + 16] = bytes((x ^ 0x5A) for x in b[offset:offset + 16])
        bad.write_bytes(bytes(b))
        _expect_error(bad, str(bad), f"{len(data)} bytes", "damaged", "CRC")


def test_text_file(tmp_path):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("this is not a checkpoint\n")
    _expect_error(bad, str(bad), "not a zip archive")


def test_zip_without_keys(tmp_path):
    p = tmp_path / "other.ckpt"
    torch.save({"model": {"w": torch.zeros(2)}}, p)
    _expect_error(p, "'cfg'", "'state_dicts'", "model")
    p2 = tmp_path / "plain.zip"
    with zipfile.ZipFile(p2, "w") as zf:
        zf.writestr("readme.txt", "hello")
    _expect_error(p2, "data.pkl")


def test_other_policy_class(ck, tmp_path):
    cfg = copy.deepcopy(ck.cfg)
    other = "diffusion_policy.policy.diffusion_unet_hybrid_image_policy.DiffusionUnetHybridImagePolicy"
    cfg["policy"]["_target_"] = other
    small = OrderedDict(list(ck.state_dicts["model"].items())[:3])
    p = tmp_path / "unet.ckpt"
    torch.save({"cfg": cfg, "state_dicts": {"model": small}, "pickles": {}}, p)
    _expect_error(p, other, SUPPORTED_POLICY)
    # the same payload with the supported class reads fine (plain-dict cfg accepted)
    cfg["policy"]["_target_"] = SUPPORTED_POLICY
    torch.save({"cfg": cfg, "state_dicts": {"model": small}, "pickles": {"epoch": pickle.dumps(7)}}, p)
    again = read_original_checkpoint(p)
    assert again.cfg == cfg and again.epoch == 7 and again.global_step is None and again.use_ema


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_zip_with_pickle(path, pkl: bytes):
    """A torch.save-style zip whose data.pkl is `pkl`."""
    buf = io.BytesIO()
    torch.save({"x": 1}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, pkl if info.filename.endswith("data.pkl") else src.read(info))


def test_malicious_pickle_is_rejected(ck, tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.ckpt"
    cfg = copy.deepcopy(ck.cfg)
    torch.save({"cfg": cfg, "state_dicts": {"model": _Evil(marker)}}, p)
    _expect_error(p, f"'{os.system.__module__}.system'", "not allow")
    crafted = (b"\x80\x02cos\nsystem\nq\x00X" + len(f"touch {marker}").to_bytes(4, "little")
               + f"touch {marker}".encode() + b"\x85q\x01Rq\x02.")
    p2 = tmp_path / "evil2.ckpt"
    _torch_zip_with_pickle(p2, crafted)
    _expect_error(p2, "'os.system'")
    _torch_zip_with_pickle(p2, b"\x80\x02c__builtin__\neval\nX\x01\x00\x00\x001\x85R.")
    _expect_error(p2, "'builtins.eval'")
    assert not marker.exists()
