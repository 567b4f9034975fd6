"""scripts/task.sh at a tiny size: demonstrations -> training -> evaluation, then a re-run that resumes."""
import json
import os
import subprocess
from pathlib import Path

import pytest

pytestmark = [pytest.mark.sim, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "dp-fast").exists(), reason="needs the project's .venv (scripts/setup.sh)")
def test_task_script_tiny(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "can"), DP_FAST_TASK_SKIP_SETUP="1", DP_FAST_TASK_DEVICE="cpu",
               DP_FAST_TASK_N="1", DP_FAST_TASK_STEPS="2", TRAIN_THREADS="1", EPISODES="2", TRAIN_EPISODES="1",
               ENVS="1", EVAL_MAX_STEPS="16", OMP_NUM_THREADS="1")
    run = subprocess.run(["bash", str(REPO / "scripts" / "task.sh"), "can"], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "demonstrations: 1 scripted can episodes" in run.stdout
    m = json.loads((tmp_path / "can" / "eval.json").read_text())
    assert len(m["test/successes"]) == 2 and len(m["train/successes"]) == 1 and m["max_steps"] == 16
    assert len(m["test/success_ci95"]) == 2
    again = subprocess.run(["bash", str(REPO / "scripts" / "task.sh"), "can"], env=env, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "demonstrations:" not in again.stdout   # the file exists: not regenerated
    assert "resuming from" in again.stdout          # training picks up its checkpoint
