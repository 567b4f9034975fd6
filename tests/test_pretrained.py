"""The policies shipped in pretrained/: each loads with dp_fast.load_policy and acts (shapes, finite actions),
and its folder carries what produced it (README table: command, commit, measured success)."""
import json
from pathlib import Path

import pytest
import torch

import dp_fast
from tests.test_policy import random_obs

PRETRAINED = Path(__file__).resolve().parents[1] / "pretrained"
FILES = sorted(PRETRAINED.glob("*.safetensors"))


def test_there_is_at_least_one_shipped_policy():
    assert FILES, f"no policies in {PRETRAINED}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_shipped_policy_loads_and_acts(path):
    assert path.stat().st_size <= 20 * 2**20, f"{path.name} is over 20 MB"
    policy = dp_fast.load_policy(path)
    out = policy.predict_action(random_obs(policy.config, 2), generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (2, policy.n_action_steps, policy.action_dim)
    assert torch.isfinite(out["action"]).all()
    info = json.loads((PRETRAINED / path.stem / "provenance.json").read_text())
    assert {"command", "commit", "task", "eval"} <= set(info), sorted(info)
    for name in ("logs.jsonl", "curves.png"):
        assert (PRETRAINED / path.stem / name).stat().st_size > 0, name
