"""Dotted overrides, aliases, presets, shape_meta from the file, CLI errors."""
import pytest

from dp_fast.cli import main
from dp_fast.data.formats import dataset_shape_meta
from dp_fast.train.config import (DEBUG_OVERRIDES, PRESETS, SEED_TASK_CPU_KEYS, WRIST_CPU_KEYS, TrainConfig,
                                  apply_overrides, build_config, canonical_key, parse_overrides, policy_config_for)
from dp_fast.train.trainer import Trainer
from tests.data.make_hdf5 import make_demos, write_robomimic
from tests.train.common import tiny_meta, write_tiny


def test_defaults_are_seed_settings():
    c = TrainConfig()
    assert (c.optimizer.learning_rate, tuple(c.optimizer.betas)) == (1e-4, (0.9, 0.95))
    assert (c.optimizer.transformer_weight_decay, c.optimizer.obs_encoder_weight_decay) == (1e-3, 1e-6)
    assert (c.training.lr_scheduler, c.training.lr_warmup_steps, c.training.seed) == ("cosine", 10, 42)
    assert (c.training.num_epochs, c.training.val_every, c.training.sample_every) == (100, 1, 5)
    assert (c.training.checkpoint_every, c.training.rollout_every, c.dataloader.batch_size) == (10, 10, 64)
    assert (c.ema.power, c.ema.inv_gamma, c.ema.min_value, c.ema.max_value, c.ema.update_after_step) == \
        (0.75, 1.0, 0.0, 0.9999, 0)


def test_parse_and_apply_dotted_overrides():
    ov = parse_overrides(["training.num_epochs=5", "optimizer.lr=3e-4", "policy.crop_shape=(70, 70)",
                          "training.device=cuda:0", "training.max_train_steps=None", "training.use_ema=false",
                          "policy.noise_scheduler.kind=ddim", "horizon=16", "task.dataset.val_ratio=0.1"])
    c = build_config(None, ov)
    assert c.training.num_epochs == 5 and c.optimizer.learning_rate == 3e-4
    assert c.training.device == "cuda:0" and c.training.max_train_steps is None and c.training.use_ema is False
    assert c.policy == {"crop_shape": (70, 70), "scheduler.kind": "ddim", "horizon": 16}
    assert c.task.val_ratio == 0.1
    assert canonical_key("optimizer.weight_decay") == "optimizer.transformer_weight_decay"


def test_unknown_key_lists_close_names():
    with pytest.raises(KeyError, match="training.num_epochs"):
        build_config(None, {"training.num_epoch": 3})
    with pytest.raises(KeyError, match="Sections: .*training"):
        build_config(None, {"trainin.foo": 3})
    with pytest.raises(TypeError, match="training.num_epochs expects an int"):
        build_config(None, {"training.num_epochs": "many"})
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["training.num_epochs"])


def test_presets_and_debug():
    seed = build_config("seed")
    assert seed.task.fixed_shape_meta["obs"]["robot0_eye_in_hand_image"]["shape"] == [3, 84, 84]
    cpu = build_config("cpu", {"training.num_epochs": 7})
    assert cpu.policy["n_layer"] == 4 and cpu.policy["vision_width"] == 16 and cpu.training.num_epochs == 7
    assert cpu.task.obs_keys == ["robot0_eye_in_hand_image", "robot0_eef_pos", "robot0_eef_quat",
                                 "robot0_gripper_qpos"]
    d = build_config("cpu", {"training.debug": True})
    assert all(getattr(d.training, k.split(".")[1]) == v for k, v in DEBUG_OVERRIDES.items())
    with pytest.raises(KeyError, match="presets"):
        build_config("nope")
    for p in PRESETS.values():  # every preset key is a valid key
        apply_overrides(TrainConfig(), p)


def test_shape_meta_from_file(tmp_path):
    path = write_tiny(tmp_path / "d.hdf5")
    meta = dataset_shape_meta(path)
    assert meta == tiny_meta() or meta["obs"] == tiny_meta()["obs"]
    only = dataset_shape_meta(path, ["robot0_eef_pos", "agentview_image"])
    assert list(only["obs"]) == ["robot0_eef_pos", "agentview_image"] and only["action"]["shape"] == [7]
    with pytest.raises(ValueError, match="robot0_eye_in_hand_image"):
        dataset_shape_meta(path, ["robot0_eye_in_hand_image"])
    pc = policy_config_for(build_config(None, {"policy.n_layer": 2}), meta)
    assert pc.n_layer == 2 and pc.crop_shape == (7, 5)  # 8x6 images keep the 76/84 crop ratio


def test_cli_unknown_key_and_missing_out(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "o"), "training.num_epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'training.num_epoch'" in err and "training.num_epochs" in err
    assert main(["train", "training.num_epochs=3"]) == 2
    assert main(["train", "--out", str(tmp_path / "o")]) == 2  # no dataset
    assert "--dataset" in capsys.readouterr().err


@pytest.mark.parametrize("preset,keys", [("cpu", WRIST_CPU_KEYS), ("cpu-can", SEED_TASK_CPU_KEYS),
                                         ("cpu-square", SEED_TASK_CPU_KEYS)])
def test_cpu_presets_build_and_train(preset, keys, tmp_path):
    """Each task preset builds its policy from a file with both cameras at 48 px (Lift's uses the wrist
    camera only, Can's and Square's both) and trains a few steps."""
    meta = {"obs": {"robot0_eye_in_hand_image": {"shape": [3, 48, 48], "type": "rgb"},
                    "agentview_image": {"shape": [3, 48, 48], "type": "rgb"},
                    "robot0_eef_pos": {"shape": [3]}, "robot0_eef_quat": {"shape": [4]},
                    "robot0_gripper_qpos": {"shape": [2]}},
            "action": {"shape": [7]}}
    data = tmp_path / "d.hdf5"
    write_robomimic(data, make_demos([20, 20, 20], meta, 0))
    cfg = build_config(preset, {"task.dataset_path": str(data), "training.max_total_steps": 2,
                                "training.val_every": 0, "training.sample_every": 0, "dataloader.batch_size": 4})
    assert cfg.task.obs_keys == keys
    tr = Trainer(cfg, tmp_path / "out", quiet=True)
    assert tr.policy.config.crop_shape == ((43, 43) if preset == "cpu" else None)  # Can, Square: no random crop
    assert list(tr.policy.config.shape_meta["obs"]) == keys
    tr.run()
    assert tr.global_step == 2 and (tmp_path / "out" / "checkpoints" / "latest.safetensors").exists()
