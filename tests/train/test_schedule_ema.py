"""LR schedule vs diffusers' get_scheduler, EMA decay vs the original EMAModel's formula, AdamW groups."""
import math

import pytest
import torch
from torch import nn

from dp_fast import DiffusionPolicy, PolicyConfig
from dp_fast.train.config import build_config
from dp_fast.train.ema import EMAModel, ema_decay
from dp_fast.train.lr import LRSchedule, lr_factor
from dp_fast.train.build import make_optimizer
from tests.data.make_hdf5 import SMALL_META


def test_cosine_hand_values():
    # warm-up 10, 110 steps: linear ramp, then half a cosine to 0
    assert lr_factor("cosine", 0, 10, 110) == 0.0
    assert lr_factor("cosine", 5, 10, 110) == pytest.approx(0.5)
    assert lr_factor("cosine", 10, 10, 110) == pytest.approx(1.0)
    assert lr_factor("cosine", 60, 10, 110) == pytest.approx(0.5)
    assert lr_factor("cosine", 110, 10, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor("cosine", 35, 10, 110) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


@pytest.mark.parametrize("name", ["cosine", "linear", "constant_with_warmup", "constant"])
def test_schedule_matches_diffusers(name):
    diffusers_opt = pytest.importorskip("diffusers.optimization")
    warmup, total, base = 7, 40, 3e-4
    p = nn.Parameter(torch.zeros(1))
    ours_opt = torch.optim.AdamW([p], lr=base)
    ref_opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=base)
    ours = LRSchedule(ours_opt, name, warmup, total)
    ref = diffusers_opt.get_scheduler(name, optimizer=ref_opt, num_warmup_steps=warmup, num_training_steps=total)
    for _ in range(total + 3):
        assert ours.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-12, abs=1e-15)
        ref_opt.step()
        ref.step()
        ours.step()


def test_schedule_state_roundtrip():
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    s = LRSchedule(opt, "cosine", 5, 50)
    for _ in range(17):
        s.step()
    opt2 = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1e-3)
    s2 = LRSchedule(opt2, "cosine", 5, 50)
    s2.load_state_dict(s.state_dict())
    assert s2.get_last_lr() == s.get_last_lr() and s2.last_step == 17


def _original_decay(step, update_after_step=0, inv_gamma=1.0, power=0.75, min_value=0.0, max_value=0.9999):
    # the original diffusion_policy EMAModel.get_decay, restated
    s = max(0, step - update_after_step - 1)
    if s <= 0:
        return 0.0
    return max(min_value, min(1 - (1 + s / inv_gamma) ** -power, max_value))


def test_ema_decay_values():
    assert ema_decay(0) == 0.0 and ema_decay(1) == 0.0
    assert ema_decay(2) == pytest.approx(1 - 2 ** -0.75)
    assert ema_decay(10) == pytest.approx(1 - 10 ** -0.75)
    assert ema_decay(10 ** 9) == 0.9999  # clamped
    for n in [0, 1, 2, 3, 5, 17, 100, 1000, 54321]:
        assert ema_decay(n) == _original_decay(n)
        assert ema_decay(n, update_after_step=3, power=2 / 3) == _original_decay(n, 3, power=2 / 3)


def test_ema_step_averages_and_copies():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    model.register_buffer("stat", torch.zeros(2))
    model.frozen = nn.Parameter(torch.zeros(2), requires_grad=False)
    ema = EMAModel(model)
    expected = {k: v.clone() for k, v in ema.averaged_model.state_dict().items()}
    for n in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.stat.add_(1.0)
        d = _original_decay(n)
        cur = model.state_dict()
        for k in expected:
            if k in ("stat", "frozen"):
                expected[k] = cur[k].clone()
            else:
                expected[k] = expected[k] * d + cur[k] * (1 - d)
        ema.step(model)
        assert ema.decay == d
        for k, v in ema.averaged_model.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=1e-6, atol=1e-7)
    assert ema.optimization_step == 5


def test_optimizer_groups_follow_original_split():
    cfg = build_config(None, {"policy.n_layer": 1, "policy.n_emb": 32, "policy.vision_width": 16})
    policy = DiffusionPolicy(PolicyConfig(shape_meta=SMALL_META, crop_shape=(7, 5), n_layer=1, n_emb=32,
                                          vision_width=16))
    opt = make_optimizer(policy, cfg)
    groups = opt.param_groups
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0, 1e-6]
    assert all(tuple(g["betas"]) == (0.9, 0.95) and g["lr"] == 1e-4 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in policy.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids))
    assert set(ids) >= {id(p) for p in trainable}
    names = {id(p): n for n, p in policy.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert "model.pos_emb" in no_decay and "model.cond_pos_emb" in no_decay
    assert all(not n.endswith(".bias") for n in decay)
    assert any(n.endswith("ln_f.weight") for n in no_decay)
    assert any(n.endswith("head.weight") for n in decay)
    assert all(names[id(p)].startswith("obs_encoder.") for p in groups[2]["params"])
