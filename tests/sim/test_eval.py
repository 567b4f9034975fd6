"""`dp-fast eval` on a tiny randomly initialised image policy: short episodes, table, JSON, video."""
import json

import pytest

pytest.importorskip("robosuite", reason="robosuite not installed (pip install 'dp-fast[sim]')")
torch = pytest.importorskip("torch")

from dp_fast import DiffusionPolicy, PolicyConfig  # noqa: E402
from dp_fast.cli import main as cli_main  # noqa: E402
from dp_fast.config import SEED_SHAPE_META  # noqa: E402
from dp_fast.sim.video import read_video  # noqa: E402

pytestmark = pytest.mark.sim

LIFT_META = SEED_SHAPE_META  # the seed's keys: both lift cameras at 84x84 + the 3 low-dim keys


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    cfg = PolicyConfig(shape_meta=LIFT_META, vision_width=16, n_layer=1, n_emb=32, n_head=2,
                       num_inference_steps=4)
    path = tmp_path_factory.mktemp("eval") / "tiny.safetensors"
    DiffusionPolicy(cfg, backend="reference").eval().save(path)
    return path


def test_eval_cli(tiny_ckpt, tmp_path, capsys):
    out_json = tmp_path / "m.json"
    rc = cli_main(["eval", "--policy", str(tiny_ckpt), "--task", "lift", "--episodes", "2", "--envs", "2",
                   "--max-steps", "12", "--video", str(tmp_path / "vid"), "--backend", "reference",
                   "--control-hz", "10", "--async", "--json", str(out_json), "--no-progress",
                   "--trace", str(tmp_path / "traces")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "test" in text and "0/2" in text and "p50" in text and "p99" in text and "deadline misses" in text
    m = json.loads(out_json.read_text())
    assert m["n_episodes"] == 2 and m["test/lengths"] == [12, 12] and m["test/success_rate"] == 0.0
    # a loaded machine can make one call late enough to hold through the whole episode: >= 1 call
    assert m["n_policy_calls"] >= 1 and m["latency_ms_p50"] > 0 and m["errors"] == []
    assert m["n_chunk_requests"] >= 2 and "warmup_ms" in m
    assert m["async_inference"] is True and m["deadline_misses"] >= 0
    assert len(m["video_paths"]) == 1 and f"video: {m['video_paths'][0]}" in text
    assert read_video(m["video_paths"][0]).shape == (13, 84, 84, 3)
    # --trace: a trace per episode, the two failures classified in the JSON and the console
    assert [p.rsplit("/", 1)[-1] for p in m["test/traces"]] == ["test_000_seed100000.jsonl",
                                                                  "test_001_seed100001.jsonl"]
    fm = m["failure_modes"]
    assert len(fm["episodes"]) == 2 and sum(fm["counts"].values()) == 2
    assert "failure modes of 2 failed episodes" in text


def test_eval_cli_rejects_bad_flags(tiny_ckpt, capsys):
    assert cli_main(["eval", "--policy", str(tiny_ckpt), "--async"]) == 2
    assert cli_main(["eval", "--policy", str(tiny_ckpt), "--train-episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert "--control-hz" in err and "--dataset" in err
