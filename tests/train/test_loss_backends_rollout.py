"""compute_loss on every backend's ops equals the plain-PyTorch one; the rollout hook calls the runner with the EMA policy
and logs its metrics (a stand-in runner, no simulator), and skips rollouts without the simulator."""
import importlib.util

import pytest
import torch

import dp_fast
from dp_fast import DiffusionPolicy, PolicyConfig
from dp_fast.train.config import build_config
from dp_fast.train.log import read_jsonl
from dp_fast.train.trainer import Trainer
from tests.data.make_hdf5 import SMALL_META
from tests.train.common import overrides, write_tiny

FAST_BACKENDS = [n for n in ("cpu", "triton") if dp_fast.available_backends()[n]["available"]]


def _batch(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"obs": {"agentview_image": torch.randint(0, 256, (b, 2, 3, 8, 6), generator=g, dtype=torch.uint8),
                    "robot0_eef_pos": torch.randn(b, 2, 3, generator=g),
                    "robot0_eef_quat": torch.randn(b, 2, 4, generator=g),
                    "robot0_gripper_qpos": torch.randn(b, 2, 2, generator=g)},
            "action": torch.randn(b, 10, 7, generator=g)}


@pytest.mark.parametrize("backend", FAST_BACKENDS + [None])
@pytest.mark.parametrize("crop_mode", ["uniform", "original"])
@pytest.mark.parametrize("train", [True, False])
def test_loss_on_fast_ops_equals_reference(crop_mode, train, backend):
    torch.manual_seed(0)
    p = DiffusionPolicy(PolicyConfig(shape_meta=SMALL_META, crop_shape=(7, 5), n_layer=1, n_emb=32,
                                     vision_width=16, p_drop_attn=0.0, crop_mode=crop_mode))
    p.train(train)
    batch = _batch()
    torch.manual_seed(3)
    want = p.compute_loss(batch, backend="reference")
    next_want = torch.rand(())
    torch.manual_seed(3)
    got = p.compute_loss(batch, backend=backend)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    assert torch.equal(torch.rand(()), next_want)  # the same number of draws consumed


@pytest.mark.skipif("cpu" not in FAST_BACKENDS, reason="needs the C++ CPU ops")
def test_training_with_fast_ops_matches_plain(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5")
    losses = []
    for fast in (False, True):
        cfg = build_config(None, overrides(data, training__num_epochs=1, training__max_train_steps=2,
                                           training__use_fast_ops=fast, training__val_every=0,
                                           training__sample_every=0, training__checkpoint_every=0))
        tr = Trainer(cfg, tmp_path / f"out{fast}", quiet=True)
        assert tr.loss_backend == (None if fast else "reference")
        tr.run()
        losses.append([r["train_loss"] for r in read_jsonl(tmp_path / f"out{fast}" / "steps.jsonl")])
    assert losses[1] == pytest.approx(losses[0], rel=1e-5, abs=1e-6)


def test_rollout_hook_uses_ema_policy_and_logs_metrics(tmp_path, monkeypatch):
    calls = []

    def fake_run_rollouts(policy, **kw):
        calls.append((policy, kw))
        return {"test/mean_score": 0.25, "train/mean_score": 0.5, "test/scores": [0.0, 0.5]}

    monkeypatch.setattr("dp_fast.train.rollouts.run_rollouts", fake_run_rollouts)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: object())  # robosuite "installed"
    data = write_tiny(tmp_path / "d.hdf5")
    cfg = build_config(None, overrides(data, training__num_epochs=2, training__max_train_steps=1,
                                       training__rollout_every=1, task__env_runner__n_test=3,
                                       task__env_runner__n_train=0))
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    assert tr.ckpt.monitor_key == "test_mean_score" and tr.ckpt.mode == "max"
    tr.run()
    assert len(calls) == 2 and calls[0][0] is tr.ema.averaged_model
    assert calls[0][1]["n_test"] == 3 and calls[0][1]["dataset"] == str(data)
    rows = read_jsonl(tmp_path / "out" / "logs.jsonl")
    assert rows[0]["test_mean_score"] == 0.25 and rows[0]["train_mean_score"] == 0.5
    assert "test_scores" not in rows[0]
    assert (tmp_path / "out" / "checkpoints" / "epoch=0000-test_mean_score=0.2500.safetensors").is_file()


def test_rollout_skipped_without_simulator(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr("importlib.util.find_spec",  # robosuite and mujoco not installed
                        lambda name, *a: None if name in ("robosuite", "mujoco") else find_spec(name, *a))
    data = write_tiny(tmp_path / "d.hdf5")
    cfg = build_config(None, overrides(data, training__num_epochs=1, training__max_train_steps=1,
                                       training__rollout_every=1, training__sample_every=0,
                                       training__val_every=0))
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    tr.run()
    row = read_jsonl(tmp_path / "out" / "logs.jsonl")[0]
    assert row["rollout_skipped"] == "robosuite and mujoco not installed (pip install -e '.[sim]')"
    assert tr.ckpt.monitor_key == "val_loss"
