"""A clean console: robosuite's known import-time messages are filtered (dp_fast.sim.robosuite_log) in the
parent and in every worker process of `dp-fast demos` / `dp-fast eval`, and nothing else of robosuite's is."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dp_fast.sim import robosuite_log
from dp_fast.sim.robosuite_log import KNOWN_MESSAGES, ROBOSUITE_LOGGER

ROOT = Path(__file__).resolve().parents[2]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_filter_drops_exactly_the_known_messages():
    robosuite_log.install()
    robosuite_log.install()  # once per process
    logger = logging.getLogger(ROBOSUITE_LOGGER)
    assert sum(isinstance(f, robosuite_log.KnownRobosuiteMessages) for f in logger.filters) == 1
    sink = _Collect()
    logger.addHandler(sink)
    try:
        def log(path, msg, level=logging.WARNING):
            logger.handle(logger.makeRecord(ROBOSUITE_LOGGER, level, path, 1, msg, None, None))

        for source, msg in KNOWN_MESSAGES:
            log(f"/site-packages/robosuite/{source}", msg + " (details)")
        assert sink.messages == []
        log("/site-packages/robosuite/macros.py", "No such controller")           # not a known text
        log("/site-packages/robosuite/models/base.py", "No private macro file found!")  # known text, other file
        log("/site-packages/robosuite/__init__.py", "Could not build the env", logging.ERROR)
        assert sink.messages == ["No such controller", "No private macro file found!", "Could not build the env"]
    finally:
        logger.removeHandler(sink)


def _console(args, timeout=1800):
    """stdout + stderr of `dp-fast ARGS` in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "dp_fast.cli"] + args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-4000:]
    return p.stdout


def _assert_no_known_messages(text):
    for _, msg in KNOWN_MESSAGES:
        assert msg.strip() not in text, f"{msg!r} still printed:\n{text[-4000:]}"


@pytest.mark.sim
def test_demos_and_eval_consoles_are_free_of_the_known_messages(tmp_path):
    pytest.importorskip("robosuite", reason="robosuite not installed (pip install 'dp-fast[sim]')")
    import torch

    from dp_fast import DiffusionPolicy, PolicyConfig

    # demos with two worker processes (spawned: each imports robosuite)
    text = _console(["demos", "--task", "lift", "--n", "1", "--out", str(tmp_path / "lift.hdf5"), "--workers", "2",
                     "--cameras", "agentview", "--image-size", "32", "--no-progress"])
    _assert_no_known_messages(text)
    assert "wrote 1 lift demos" in text and "expert success 1/" in text

    # eval with two env workers (forkserver: the server imports robosuite, the workers build envs)
    meta = {"obs": {"agentview_image": {"shape": [3, 32, 32], "type": "rgb"},
                    "robot0_eef_pos": {"shape": [3]}, "robot0_eef_quat": {"shape": [4]},
                    "robot0_gripper_qpos": {"shape": [2]}},
            "action": {"shape": [7]}}
    torch.manual_seed(0)
    cfg = PolicyConfig(shape_meta=meta, crop_shape=(28, 28), vision_width=16, n_layer=1, n_emb=32, n_head=2,
                       num_inference_steps=2)
    DiffusionPolicy(cfg, backend="reference").eval().save(tmp_path / "tiny.safetensors")
    text = _console(["eval", "--policy", str(tmp_path / "tiny.safetensors"), "--task", "lift", "--episodes", "2",
                     "--envs", "2", "--max-steps", "4", "--backend", "reference", "--video", str(tmp_path / "vid")])
    _assert_no_known_messages(text)
    assert "policy latency" in text and "0/2" in text
    # the still written next to the video, named in the report
    stills = sorted((tmp_path / "vid").glob("test_000_*.png"))
    assert len(stills) == 1 and f"still: {stills[0]}" in text
