"""The trainer in-process: logs, curves, checkpoints (EMA export for load_policy, top-k), debug mode,
loss falling on a tiny problem, budget stops."""

import pytest
import torch

from dp_fast import load_policy
from dp_fast.train.config import build_config
from dp_fast.train.log import read_jsonl
from dp_fast.train.trainer import Trainer
from tests.data.make_hdf5 import make_demos, write_robomimic
from tests.train.common import overrides, tiny_meta, write_tiny


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    data = write_tiny(d / "d.hdf5")
    cfg = build_config(None, overrides(data, training__num_epochs=3, training__max_train_steps=3,
                                       training__sample_every=1, training__checkpoint_every=1,
                                       checkpoint__topk__k=2, training__lr_warmup_steps=2))
    tr = Trainer(cfg, d / "out", quiet=True)
    result = tr.run()
    return tr, result, d / "out"


def test_logs_rows_and_curves(tiny_run):
    tr, result, out = tiny_run
    rows = read_jsonl(out / "logs.jsonl")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert [r["global_step"] for r in rows] == [3, 6, 9]
    for r in rows:
        assert r["train_loss"] > 0 and r["val_loss"] > 0 and r["train_action_mse_error"] >= 0
        assert "lr" in r and "rollout_skipped" not in r  # rollout_every=0: never
    steps = read_jsonl(out / "steps.jsonl")
    assert [s["global_step"] for s in steps] == list(range(1, 10))
    assert steps[0]["lr"] == 0.0 and steps[2]["lr"] == pytest.approx(1e-4)  # warm-up 2 optimizer steps
    assert rows[0]["train_loss"] == pytest.approx(sum(s["train_loss"] for s in steps[:3]) / 3)
    png = (out / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
    assert result["epoch"] == 3 and result["global_step"] == 9


def test_latest_checkpoint_is_ema_policy(tiny_run):
    tr, _, out = tiny_run
    loaded = load_policy(out / "checkpoints" / "latest.safetensors")
    ema_sd, model_sd = tr.ema.averaged_model.state_dict(), tr.policy.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(ema_sd)
    for k in got:
        torch.testing.assert_close(got[k], ema_sd[k], rtol=0, atol=0)
    assert any(not torch.equal(ema_sd[k], model_sd[k]) for k in ema_sd)  # the EMA is not the model
    assert loaded.config == tr.policy_config
    # the normalizer fitted on the data travels with the weights
    torch.testing.assert_close(loaded.normalizer.state_dict()["params_dict.robot0_eef_pos.scale"],
                               tr.policy.normalizer.state_dict()["params_dict.robot0_eef_pos.scale"])


def test_topk_files(tiny_run):
    tr, _, out = tiny_run
    files = sorted(p.name for p in (out / "checkpoints").glob("epoch=*.safetensors"))
    rows = read_jsonl(out / "logs.jsonl")
    best = sorted(rows, key=lambda r: r["val_loss"])[:2]
    assert len(files) == 2
    assert {f"epoch={r['epoch']:04d}" for r in best} == {f.split("-")[0] for f in files}
    load_policy(out / "checkpoints" / files[0])


def test_rerun_after_completion_is_noop(tiny_run):
    tr, _, out = tiny_run
    before = (out / "steps.jsonl").read_text()
    tr2 = Trainer(tr.cfg, out, quiet=True)
    assert tr2.resumed_from == 9 and tr2.epoch == 3
    assert tr2.run()["global_step"] == 9
    assert (out / "steps.jsonl").read_text() == before


def test_debug_mode_and_total_step_budget(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5")
    cfg = build_config(None, overrides(data, training__debug=True, training__max_total_steps=4))
    assert cfg.training.num_epochs == 2 and cfg.training.max_train_steps == 3
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    res = tr.run()
    assert res["global_step"] == 4 and res["stopped"].startswith("training.max_total_steps")
    rows = read_jsonl(tmp_path / "out" / "logs.jsonl")
    assert rows[0]["epoch"] == 0 and rows[-1]["event"] == "stopped"
    s = torch.load(tmp_path / "out" / "checkpoints" / "latest.train.pt", weights_only=True)
    assert (s["epoch"], s["global_step"], s["batch_in_epoch"]) == (1, 4, 1)


def test_gradient_accumulation_steps_optimizer_every_n(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5")
    cfg = build_config(None, overrides(data, training__num_epochs=1, training__max_train_steps=4,
                                       training__gradient_accumulate_every=2, training__lr_scheduler="constant",
                                       training__val_every=0, training__sample_every=0, training__checkpoint_every=0))
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    tr.run()
    assert tr.lr_schedule.last_step == 2  # 4 batches / 2
    st = tr.optimizer.state_dict()["state"]
    assert all(int(v["step"]) == 2 for v in st.values())
    assert tr.ema.optimization_step == 4  # EMA updates every batch, as the original


def test_loss_falls_on_tiny_problem(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5", n_episodes=4, length=16, smooth=True)
    cfg = build_config(None, overrides(data, training__num_epochs=1000, training__max_total_steps=150,
                                       optimizer__lr=2e-3, training__lr_warmup_steps=10,
                                       training__val_every=0, training__sample_every=0,
                                       training__checkpoint_every=0, training__checkpoint_every_steps=0,
                                       dataloader__batch_size=32, policy__p_drop_attn=0.0))
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    tr.run()
    losses = [r["train_loss"] for r in read_jsonl(tmp_path / "out" / "steps.jsonl")]
    first, last = sum(losses[:15]) / 15, sum(losses[-15:]) / 15
    assert len(losses) == 150 and last < 0.6 * first, (first, last)


def test_cpu_preset_runs_with_ddim_sampling(tmp_path):
    meta = tiny_meta()
    meta["obs"] = {("robot0_eye_in_hand_image" if k == "agentview_image" else k): v for k, v in meta["obs"].items()}
    data = tmp_path / "d.hdf5"
    write_robomimic(data, make_demos([12] * 5, meta, 0))
    ov = overrides(data, policy__crop_shape=(7, 5), training__num_epochs=1, training__max_train_steps=2,
                   training__sample_every=1, training__val_every=1, training__lr_warmup_steps=100)
    for k in ("policy.num_inference_steps", "policy.n_layer", "policy.n_emb", "policy.n_head"):
        ov.pop(k)
    cfg = build_config("cpu", ov)
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    pc = tr.policy_config
    assert (pc.scheduler.kind, pc.inference_steps, pc.n_layer, pc.n_emb, pc.vision_width) == ("ddim", 10, 4, 128, 16)
    assert list(pc.shape_meta["obs"]) == ["robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat",
                                          "robot0_gripper_qpos"]
    assert pc.p_drop_attn == 0.0 and pc.horizon == 16
    tr.run()
    row = read_jsonl(tmp_path / "out" / "logs.jsonl")[0]
    assert row["train_action_mse_error"] >= 0 and row["val_loss"] > 0
    assert tr.lr_schedule.total_steps == 2  # the schedule spans the batches this run will do


def test_time_budget_stops_and_resume_false_starts_over(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5")
    out = tmp_path / "out"
    cfg = build_config(None, overrides(data, training__num_epochs=3, training__max_train_minutes=1e-9,
                                       training__val_every=0, training__sample_every=0))
    res = Trainer(cfg, out, quiet=True).run()
    assert res["global_step"] == 1 and "max_train_minutes" in res["stopped"]
    assert (out / "curves.png").is_file() and (out / "checkpoints" / "latest.train.pt").is_file()
    tr = Trainer(cfg, out, quiet=True)  # the same command continues
    assert tr.resumed_from == 1 and tr.run()["global_step"] == 2
    assert [r["global_step"] for r in read_jsonl(out / "steps.jsonl")] == [1, 2]
    fresh = build_config(None, overrides(data, training__num_epochs=3, training__max_train_minutes=1e-9,
                                         training__val_every=0, training__sample_every=0, training__resume=False))
    tr = Trainer(fresh, out, quiet=True)
    assert tr.resumed_from is None and tr.global_step == 0
    assert read_jsonl(out / "steps.jsonl") == [] and not (out / "checkpoints" / "latest.train.pt").exists()


def test_resume_mid_accumulation_keeps_gradients(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5")
    base = dict(training__num_epochs=1, training__max_train_steps=5, training__gradient_accumulate_every=2,
                training__val_every=0, training__sample_every=0, training__checkpoint_every=0,
                training__checkpoint_every_steps=3, policy__p_drop_attn=0.0)
    ref = Trainer(build_config(None, overrides(data, **base)), tmp_path / "ref", quiet=True)
    ref.run()
    part = Trainer(build_config(None, overrides(data, **base, training__max_total_steps=3)), tmp_path / "o",
                   quiet=True)
    part.run()  # stops after batch 3: one batch of gradients pending
    assert torch.load(tmp_path / "o" / "checkpoints" / "latest.train.pt", weights_only=True)["grads"]
    rest = Trainer(build_config(None, overrides(data, **base)), tmp_path / "o", quiet=True)
    rest.run()
    want = [r["train_loss"] for r in read_jsonl(tmp_path / "ref" / "steps.jsonl")]
    assert [r["train_loss"] for r in read_jsonl(tmp_path / "o" / "steps.jsonl")] == want
    for k, v in ref.policy.state_dict().items():
        assert torch.equal(v, rest.policy.state_dict()[k]), k


def test_obs_as_inpainting_trains(tmp_path):
    """policy.obs_as_cond=False (the observations inpainted into the trajectory): the dataset gathers the
    horizon's obs frames, the loss the policy wants."""
    data = write_tiny(tmp_path / "d.hdf5")
    cfg = build_config(None, overrides(data, policy__obs_as_cond=False, training__num_epochs=1,
                                       training__max_train_steps=3))
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    assert tr.dataset.get_batch([0])["obs"]["robot0_eef_pos"].shape[1] == tr.policy_config.horizon
    tr.run()
    rows = read_jsonl(tmp_path / "out" / "logs.jsonl")
    assert rows[0]["global_step"] == 3 and rows[0]["train_loss"] > 0 and rows[0]["val_loss"] > 0
