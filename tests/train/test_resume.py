"""Resume equality: runs SIGKILLed mid-epoch and during checkpoint writes (resume state and epoch-end
writes), restarted with the same command, give exactly the losses, logs and weights of an
uninterrupted run (CPU, one thread). The kills are injected by tests/train/killed_run.py. Also: a
failed resume-state write keeps the previous state, and a killed write's temporary file is removed."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dp_fast.train.log import read_jsonl
from dp_fast.train.resume import CheckpointManager, write_state
from tests.train.common import overrides, write_tiny

ROOT = Path(__file__).resolve().parents[2]


def _args(data, out):
    ov = overrides(data, training__num_epochs=2, training__checkpoint_every_steps=2, training__sample_every=1,
                   training__checkpoint_every=1, training__lr_warmup_steps=3, optimizer__lr=1e-3)
    return ["train", "--quiet", "--out", str(out)] + \
        [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in ov.items()]


def _train(data, out, kill=None):
    """`dp-fast train` in a subprocess; kill="step:N" / "save:N" SIGKILLs it there (see killed_run.py)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m"] + (["tests.train.killed_run", kill] if kill else ["dp_fast.cli"])
    p = subprocess.run(cmd + _args(data, out), cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if kill:
        assert p.returncode == -9, f"expected SIGKILL at {kill}, got rc {p.returncode}\n{p.stderr[-3000:]}"
    else:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def _state(out):
    return torch.load(out / "checkpoints" / "latest.train.pt", weights_only=True)


def _epoch_rows(out):
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in read_jsonl(out / "logs.jsonl")]


def test_killed_runs_resume_exactly(tmp_path):
    data = write_tiny(tmp_path / "d.hdf5")
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _train(data, ref)
    ref_steps = read_jsonl(ref / "steps.jsonl")
    assert len(ref_steps) == 12  # 2 epochs x 6 batches

    # 1) mid-epoch, after step 5 was trained; the last checkpoint (which reads the losses back and logs
    #    them) is step 4, so step 5's row is not in the log yet
    _train(data, out, kill="step:5")
    assert _state(out)["global_step"] == 4 and len(read_jsonl(out / "steps.jsonl")) == 4
    # 2) resumed, killed during the epoch-end write (step 6) of the resume state, after the epoch row
    #    was logged: the previous state (step 4) must be what is left, the half file must not count
    _train(data, out, kill="save:1")
    assert _state(out)["global_step"] == 4
    assert list((out / "checkpoints").glob(".latest.train.pt.*.tmp")), "the killed write left its temp file"
    assert len(read_jsonl(out / "logs.jsonl")) == 1  # the epoch 0 row, to be dropped on resume
    # 3) resumed at step 4; saves at 6 (epoch end), 8, 10: killed during the third
    _train(data, out, kill="save:3")
    assert _state(out)["global_step"] == 8
    # 4) to the end
    _train(data, out)
    assert not list((out / "checkpoints").glob(".*.tmp"))

    got = read_jsonl(out / "steps.jsonl")
    assert [r["global_step"] for r in got] == list(range(1, 13))
    assert [r["train_loss"] for r in got] == [r["train_loss"] for r in ref_steps]  # bit-exact
    assert [r["lr"] for r in got] == [r["lr"] for r in ref_steps]
    assert _epoch_rows(out) == _epoch_rows(ref)
    for name in ["latest.safetensors"] + sorted(p.name for p in (ref / "checkpoints").glob("epoch=*")):
        a, b = load_file(ref / "checkpoints" / name), load_file(out / "checkpoints" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = _state(ref), _state(out)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert sa["rng"]["torch"].equal(sb["rng"]["torch"]) and sa["batches"] == sb["batches"]


def test_failed_state_write_keeps_previous_state(tmp_path, monkeypatch):
    mgr = CheckpointManager(tmp_path)
    write_state({"global_step": 1}, mgr.state_path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("dp_fast.atomic_file.os.replace", boom)
    with pytest.raises(OSError):
        write_state({"global_step": 2}, mgr.state_path)
    monkeypatch.undo()
    assert mgr.load_state()["global_step"] == 1
    assert not list(mgr.dir.glob(".*.tmp"))
    (mgr.dir / ".latest.train.pt.999-0000.tmp").write_bytes(b"half a file")  # a SIGKILLed write
    CheckpointManager(tmp_path)
    assert not (mgr.dir / ".latest.train.pt.999-0000.tmp").exists()
