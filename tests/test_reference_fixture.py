"""The reference path against tensors recorded from the original implementation
(../shared/fixtures/dp_reference, see its README). fp32, atol 1e-5."""
import json
import re

import pytest
import torch

from dp_fast import DiffusionPolicy, PolicyConfig
from dp_fast.original_format import map_original_state_dict
from tests.fixtures_path import fixtures_dir

ATOL = 1e-5


@pytest.fixture(scope="module")
def fx():
    return torch.load(fixtures_dir() / "dp_reference" / "fixture.pt", weights_only=True)


def _canonical(name: str) -> str:
    """robomimic alias names of the fixture's gradient keys -> canonical names."""
    name = re.sub(r"(obs_nets\.[^.]+)\.nets\.0\.", r"\1.backbone.", name)
    return re.sub(r"(obs_nets\.[^.]+)\.nets\.1\.", r"\1.pool.", name)


@pytest.fixture(scope="module")
def policy(fx):
    meta = json.loads(fx["meta_json"]) if isinstance(fx["meta_json"], str) else None
    cfg = PolicyConfig(shape_meta=meta["shape_meta"], **meta["policy_kwargs"], crop_mode="original")
    assert cfg == PolicyConfig(crop_mode="original"), "the fixture is the seed configuration"
    p = DiffusionPolicy(cfg)
    state = {k: v.float() for k, v in fx["state_dict_fp16"].items()}
    p.load_state_dict(map_original_state_dict(state), strict=True)
    return p.eval()


def close(a, b, atol=ATOL, rtol=0.0):
    assert a.shape == b.shape, (a.shape, b.shape)
    excess = ((a - b).abs() - atol - rtol * b.abs()).max().item()
    assert excess <= 0, f"max abs error {(a - b).abs().max().item():.3g} > {atol} + {rtol} |recorded|"


def test_scheduler_tables(fx, policy):
    s = policy.noise_scheduler
    for name in ("betas", "alphas", "alphas_cumprod"):
        assert torch.equal(getattr(s, name).cpu(), fx["scheduler"][name]), name
    assert torch.equal(s.timesteps(100).cpu(), fx["predict"]["timesteps"])


def test_normalized_obs(fx, policy):
    nobs, batch = policy.prepare_obs(fx["obs"])
    assert batch == 3
    for k, v in fx["obs_encoder"]["nobs_flat"].items():
        close(nobs[k], v, 0)
    # uint8 images are divided by 255: same normalized images
    nobs8, _ = policy.prepare_obs({**fx["obs"], **fx["obs_uint8"]})
    for k in fx["obs_uint8"]:
        close(nobs8[k], nobs[k], 1e-7)


def test_encoder_intermediates(fx, policy):
    enc = policy.obs_encoder
    nobs = fx["obs_encoder"]["nobs_flat"]
    for key in ("agentview_image", "robot0_eye_in_hand_image"):
        rec = {n.split(".", 1)[1]: v for n, v in fx["obs_encoder"].items() if n.startswith(key + ".")}
        crop = enc.crop(nobs[key])
        close(crop, rec["cropped_input"], 0)
        core = enc.obs_nets[key]
        bb = core.backbone(crop)
        # 20 fp32 convolutions with values up to ~7: the rounding depends on the CPU's SIMD width (AVX2 vs
        # AVX-512 kernels of oneDNN differ by ~1.4e-5 here), so the bound is relative as well
        close(bb, rec["backbone_out"], rtol=1e-5)
        kp = core.pool(bb)
        close(kp, rec["keypoints"])
        close(core.nets["3"](kp.flatten(1)), rec["core_out_pre_relu"])
    with torch.no_grad():
        feats = enc(nobs)
    close(feats, fx["obs_encoder"]["features"])
    close(feats.reshape(3, 2, -1), fx["obs_encoder"]["cond"])


def test_transformer_forward(fx, policy):
    t = fx["transformer"]
    with torch.no_grad():
        close(policy.model(t["sample"], t["timestep"], t["cond"]), t["out"])
        close(policy.model(t["sample"], t["timestep_scalar"], t["cond"]), t["out_scalar"])
        close(policy.model(t["sample"], 42, t["cond"]), t["out_scalar"])


def test_every_denoising_step(fx, policy):
    """One step at a time from the recorded model inputs: model output, x0 and x_{t-1}."""
    p = fx["predict"]
    cond = fx["obs_encoder"]["cond"]
    sched = policy.noise_scheduler
    with torch.no_grad():
        for i in (0, 1, 50, 98, 99):
            t = p["timesteps"][i]
            eps = policy.model(p["model_input"][i], t, cond)
            close(eps, p["model_output"][i])
            noise = p["noise"][i + 1] if i < 99 else None
            prev = sched.step(p["model_output"][i], t, p["model_input"][i], noise, 100)
            close(prev, p["prev_sample"][i])


def test_predict_action_with_injected_noise(fx, policy):
    out = policy.predict_action(fx["obs"], noise=fx["predict"]["noise"])
    close(out["action_pred"], fx["predict"]["action_pred"])
    close(out["action"], fx["predict"]["action"])
    assert out["action"].shape == (3, 8, 7)


def test_predict_action_global_rng_draw_order(fx, policy):
    """With noise=None the draws follow the original's order: same global seed, same actions."""
    torch.manual_seed(77)  # the fixture's sampling seed (fixture_meta.json seeds.sample)
    out = policy.predict_action(fx["obs"])
    close(out["action_pred"], fx["predict"]["action_pred"])


def test_predict_action_uint8(fx, policy):
    obs = {**fx["obs"], **fx["obs_uint8"]}
    out = policy.predict_action(obs, noise=fx["predict"]["noise"])
    close(out["action"], fx["predict"]["action"])


def _loss_and_grads(policy, fx, section, crop_offsets=None):
    L = fx[section] if section == "loss_eval" else fx["loss_eval"]
    policy.zero_grad(set_to_none=True)
    loss = policy.compute_loss(L["batch"], noise=L["noise"], timesteps=L["timesteps"], crop_offsets=crop_offsets)
    loss.backward()
    grads = {n: p.grad for n, p in policy.named_parameters()}
    return loss, grads


def test_compute_loss_and_gradients_eval(fx, policy):
    L = fx["loss_eval"]
    loss, grads = _loss_and_grads(policy, fx, "loss_eval")
    close(loss.detach(), L["loss"])
    for name, g in L["grads"].items():
        close(grads[_canonical(name)], g)


def test_compute_loss_train_crop(fx, policy):
    """Train-mode random crop (offsets recorded from the original), transformer in eval (no dropout)."""
    L = fx["loss_train_crop"]
    policy.train()
    policy.model.eval()
    try:
        offsets = dict(L["crop_idx"])  # {key: (N, 2) [top, left]}
        loss, grads = _loss_and_grads(policy, fx, "loss_train_crop", offsets)
        close(loss.detach(), L["loss"])
        for name, g in L["grads"].items():
            close(grads[_canonical(name)], g)
        # the original's offsets come from floor(8 * U) of the recorded uniforms (h then w per key)
        u = L["crop_uniform"]
        for j, key in enumerate(("agentview_image", "robot0_eye_in_hand_image")):
            top, left = (8 * u[2 * j]).long().reshape(-1), (8 * u[2 * j + 1]).long().reshape(-1)
            assert torch.equal(torch.stack([top, left], 1), L["crop_idx"][key])
    finally:
        policy.eval()
