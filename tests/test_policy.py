"""Public API: load_policy on original and own checkpoints, save round trip, policy modes, bad input."""
import dataclasses

import pytest
import torch

import dp_fast
from dp_fast import DiffusionPolicy, PolicyConfig, SchedulerConfig, load_policy
from dp_fast.policy import ObsError
from dp_fast.policy_file import CheckpointError
from tests.fixtures_path import fixtures_dir

SMALL_META = {
    "obs": {
        "cam": {"shape": [3, 40, 40], "type": "rgb"},
        "pos": {"shape": [3]},
        "grip": {"shape": [2]},
    },
    "action": {"shape": [4]},
}


def small_config(**kw):
    base = dict(shape_meta=SMALL_META, horizon=8, n_obs_steps=2, n_action_steps=4, crop_shape=(36, 36),
                n_layer=2, n_head=2, n_emb=32, num_inference_steps=5,
                scheduler=SchedulerConfig(num_train_timesteps=20))
    base.update(kw)
    return PolicyConfig(**base)


def random_obs(cfg: PolicyConfig, batch: int, steps=None, uint8=True):
    steps = steps or cfg.n_obs_steps
    obs = {}
    for key, meta in cfg.shape_meta["obs"].items():
        shape = (batch, steps, *meta["shape"])
        if meta.get("type") == "rgb":
            obs[key] = torch.randint(0, 256, shape, dtype=torch.uint8) if uint8 else torch.rand(shape)
        else:
            obs[key] = torch.randn(shape)
    return obs


# ---------------------------------------------------------------------- original checkpoint
@pytest.fixture(scope="module")
def variant_expected():
    return torch.load(fixtures_dir() / "dp_variant_ckpt" / "variant_expected.pt", weights_only=True)


def test_original_variant_checkpoint_reproduces_actions(variant_ckpt, variant_expected):
    ex = variant_expected
    policy = load_policy(variant_ckpt)
    c = policy.config
    assert (c.horizon, c.n_obs_steps, c.n_layer, c.n_emb, c.n_cond_layers, c.rgb_keys) == \
        (16, 3, 4, 128, 2, ("agentview_image",))
    assert not policy.training
    nobs, b = policy.prepare_obs(ex["obs"])
    with torch.no_grad():
        feats = policy.obs_encoder(nobs)
        assert (feats - ex["obs_encoder"]["features"]).abs().max() <= 1e-5
        t = ex["transformer"]
        out = policy.model(t["sample"], t["timestep"], t["cond"])
        assert (out - t["out"]).abs().max() <= 1e-5
    res = policy.predict_action(ex["obs"], noise=ex["noise"])
    assert (res["action_pred"] - ex["action_pred"]).abs().max() <= 1e-5
    assert (res["action"] - ex["action"]).abs().max() <= 1e-5
    assert res["action"].shape == (2, 8, 7)
    # uint8 images give the same actions
    res8 = policy.predict_action({**ex["obs"], **ex["obs_uint8"]}, noise=ex["noise"])
    assert (res8["action"] - ex["action"]).abs().max() <= 1e-5


def test_original_checkpoint_uses_ema_weights(variant_ckpt, tmp_path):
    """With training.use_ema the EMA weights are loaded: perturb 'model' only, actions unchanged."""
    payload = torch.load(variant_ckpt, weights_only=False)
    sd = payload["state_dicts"]["model"]
    key = "model.head.bias"
    sd[key] = sd[key] + 1.0
    path = tmp_path / "edited.ckpt"
    torch.save(payload, path)
    a = load_policy(path).model.head.bias
    assert torch.equal(a, payload["state_dicts"]["ema_model"][key])


def test_own_checkpoint_round_trip(variant_ckpt, variant_expected, tmp_path):
    policy = load_policy(variant_ckpt)
    path = tmp_path / "p.safetensors"
    policy.save(path)
    again = load_policy(path)
    assert again.config == policy.config
    sd1, sd2 = policy.state_dict(), again.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    res = again.predict_action(variant_expected["obs"], noise=variant_expected["noise"])
    assert torch.equal(res["action"], policy.predict_action(variant_expected["obs"], noise=variant_expected["noise"])["action"])
    assert not list(tmp_path.glob(".*.tmp")), "no temporary file left behind"


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    policy = DiffusionPolicy(small_config())
    path = tmp_path / "p.safetensors"
    policy.save(path)
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError):
        policy.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["p.safetensors"]


# ---------------------------------------------------------------------- modes and shapes
@pytest.mark.parametrize("kw", [
    dict(),
    dict(n_cond_layers=2),
    dict(causal_attn=False),
    dict(pred_action_steps_only=True, causal_attn=False),
    dict(pred_action_steps_only=True),
    dict(obs_as_cond=False),
    dict(obs_as_cond=False, time_as_cond=False),
    dict(obs_as_cond=False, time_as_cond=False, causal_attn=False),
    dict(scheduler=SchedulerConfig(kind="ddim", num_train_timesteps=20)),
    dict(scheduler=SchedulerConfig(kind="ddim", num_train_timesteps=20, eta=1.0, set_alpha_to_one=False)),
    dict(scheduler=SchedulerConfig(num_train_timesteps=20, prediction_type="sample", clip_sample=False)),
])
def test_modes_predict_and_loss(kw):
    torch.manual_seed(0)
    cfg = small_config(**kw)
    policy = DiffusionPolicy(cfg).eval()
    obs = random_obs(cfg, 3, steps=cfg.horizon)
    out = policy.predict_action(obs)
    assert out["action"].shape == (3, cfg.n_action_steps, 4)
    assert out["action_pred"].shape == ((3, cfg.n_action_steps, 4) if cfg.pred_action_steps_only else (3, cfg.horizon, 4))
    assert torch.isfinite(out["action_pred"]).all()
    # the same injected noise gives the same actions; different noise different ones
    n = torch.randn(policy.noise_draws(), *policy.trajectory_shape(3))
    a1 = policy.predict_action(obs, noise=n)["action"]
    a2 = policy.predict_action(obs, noise=n.clone())["action"]
    a3 = policy.predict_action(obs, noise=torch.randn_like(n))["action"]
    assert torch.equal(a1, a2) and not torch.equal(a1, a3)
    # generator draws = injected noise in the original's order
    g = torch.Generator().manual_seed(5)
    ref = [torch.randn(policy.trajectory_shape(3), generator=torch.Generator().manual_seed(5))]
    g2 = torch.Generator().manual_seed(5)
    draws = torch.stack([torch.randn(policy.trajectory_shape(3), generator=g2) for _ in range(policy.noise_draws())])
    assert torch.equal(policy.predict_action(obs, generator=g)["action"], policy.predict_action(obs, noise=draws)["action"])
    del ref
    policy.train()
    batch = {"obs": obs, "action": torch.randn(3, cfg.horizon, 4)}
    loss = policy.compute_loss(batch)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    grads = [p.grad for p in policy.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_inpainting_keeps_observation_features():
    """obs_as_cond=False: the observation part of the first n_obs_steps rows is fixed to the features."""
    torch.manual_seed(1)
    cfg = small_config(obs_as_cond=False)
    policy = DiffusionPolicy(cfg).eval()
    obs = random_obs(cfg, 2)
    nobs, b = policy.prepare_obs(obs)
    feats = policy.encode_obs(nobs, b)
    traj = policy.sample(feats)
    assert torch.equal(traj[:, :2, 4:], feats)
    assert traj.shape == (2, 8, 4 + feats.shape[-1])


def test_pred_action_steps_only_denoises_executed_steps():
    cfg = small_config(pred_action_steps_only=True)
    policy = DiffusionPolicy(cfg).eval()
    assert policy.trajectory_shape(2) == (2, 4, 4)
    out = policy.predict_action(random_obs(cfg, 2))
    assert torch.equal(out["action"], out["action_pred"])


def test_optim_groups_split_like_original():
    policy = DiffusionPolicy(small_config())
    groups = policy.get_optim_groups(1e-3, 1e-6)
    names = {id(p): n for n, p in policy.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert "model.decoder.layers.0.self_attn.in_proj_weight" in decay
    assert "model.decoder.layers.0.self_attn.out_proj.weight" in decay
    assert "model.head.weight" in decay
    assert {"model.pos_emb", "model.cond_pos_emb", "model.ln_f.weight", "model.head.bias",
            "model.decoder.layers.1.norm3.weight", "model.decoder.layers.0.self_attn.in_proj_bias"} <= no_decay
    assert not decay & no_decay
    assert decay | no_decay == {n for n in names.values() if n.startswith("model.")}
    assert len(groups[2]["params"]) == len(list(policy.obs_encoder.parameters()))


# ---------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small():
    cfg = small_config()
    return DiffusionPolicy(cfg).eval(), cfg


def _raises(fn, *fragments, exc=ObsError):
    with pytest.raises(exc) as info:
        fn()
    for f in fragments:
        assert f in str(info.value), (f, str(info.value))


def test_missing_obs_key(small):
    policy, cfg = small
    obs = random_obs(cfg, 1)
    del obs["pos"]
    _raises(lambda: policy.predict_action(obs), "missing key 'pos'", "(B, >=2, 3)")


def test_wrong_obs_shape(small):
    policy, cfg = small
    obs = random_obs(cfg, 1)
    obs["cam"] = obs["cam"][..., :39]
    _raises(lambda: policy.predict_action(obs), "obs['cam']", "(B, >=2, 3, 40, 40)", "(1, 2, 3, 40, 39)")
    obs = random_obs(cfg, 1, steps=1)
    _raises(lambda: policy.predict_action(obs), ">=2")


def test_wrong_obs_dtype(small):
    policy, cfg = small
    obs = random_obs(cfg, 1)
    obs["pos"] = obs["pos"].to(torch.int32)
    _raises(lambda: policy.predict_action(obs), "obs['pos']", "floating", "torch.int32")
    obs = random_obs(cfg, 1)
    obs["cam"] = obs["cam"].to(torch.int16)
    _raises(lambda: policy.predict_action(obs), "uint8 or floating", "torch.int16")


def test_nan_obs(small):
    policy, cfg = small
    obs = random_obs(cfg, 1)
    obs["grip"][0, 1, 0] = float("nan")
    _raises(lambda: policy.predict_action(obs), "obs['grip']", "NaN")


def test_batch_mismatch(small):
    policy, cfg = small
    obs = random_obs(cfg, 2)
    obs["grip"] = obs["grip"][:1]
    _raises(lambda: policy.predict_action(obs), "batch size")


def test_wrong_noise_shape(small):
    policy, cfg = small
    obs = random_obs(cfg, 2)
    _raises(lambda: policy.predict_action(obs, noise=torch.randn(5, 2, 8, 3)), "(5, 2, 8, 4)", "(5, 2, 8, 3)")
    _raises(lambda: policy.predict_action(obs, noise=torch.randn(4, 2, 8, 4)), "(5, 2, 8, 4)")


def test_bad_loss_batch(small):
    policy, cfg = small
    _raises(lambda: policy.compute_loss({"obs": random_obs(cfg, 2)}), "'obs' and 'action'")
    _raises(lambda: policy.compute_loss({"obs": random_obs(cfg, 2), "action": torch.randn(2, 7, 4)}),
            "batch['action']", "(B, 8, 4)", "(2, 7, 4)")


def test_checkpoint_errors(tmp_path, small):
    policy, _ = small
    _raises(lambda: load_policy(tmp_path / "nope.safetensors"), "not found", exc=CheckpointError)
    good = tmp_path / "good.safetensors"
    policy.save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    _raises(lambda: load_policy(tmp_path / "trunc.safetensors"), "trunc.safetensors", exc=CheckpointError)
    (tmp_path / "junk.bin").write_bytes(b"hello world, not a checkpoint")
    _raises(lambda: load_policy(tmp_path / "junk.bin"), "unknown checkpoint format", exc=CheckpointError)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
    _raises(lambda: load_policy(tmp_path / "plain.safetensors"), "dp_fast metadata", exc=CheckpointError)


def test_bad_config():
    with pytest.raises(ValueError, match="divisible"):
        small_config(n_emb=30, n_head=4)
    with pytest.raises(ValueError, match="crop_mode"):
        small_config(crop_mode="random")
    with pytest.raises(ValueError, match="beta_schedule"):
        SchedulerConfig(beta_schedule="cosine")


def test_backend_argument():
    assert dp_fast.available_backends()["reference"]["available"]
    p = DiffusionPolicy(small_config(), backend="reference")
    assert p.backend == "reference"
    with pytest.raises(ValueError, match="backend must be one of"):
        DiffusionPolicy(small_config(), backend="fastest")


# ---------------------------------------------------------------------- vision width
def test_vision_width_scales_backbone_and_round_trips(tmp_path):
    cfg = small_config(vision_width=16)
    torch.manual_seed(0)
    policy = DiffusionPolicy(cfg).eval()
    core = policy.obs_encoder.obs_nets["cam"]
    widths = [m.out_channels for m in core.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths[0] == 16 and max(widths) == 128 and core.pool.nets.in_channels == 128
    n16 = sum(p.numel() for p in core.parameters())
    n64 = sum(p.numel() for p in DiffusionPolicy(small_config()).obs_encoder.obs_nets["cam"].parameters())
    assert n16 * 10 < n64  # conv weights scale with width^2
    obs = random_obs(cfg, 2)
    noise = torch.randn(policy.noise_draws(), 2, cfg.horizon, cfg.action_dim)
    path = tmp_path / "w16.safetensors"
    policy.save(path)
    loaded = load_policy(path)
    assert loaded.config.vision_width == 16
    a = policy.predict_action(obs, noise=noise)["action"]
    b = loaded.predict_action(obs, noise=noise)["action"]
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="vision_width must be a positive multiple of 16"):
        small_config(vision_width=24)
