"""dp_fast.atomic_file.atomic_write, the one atomic write of the package: files get the mode the umask
gives (not the 0600 of a mkstemp temporary), a failed write keeps the previous file and leaves no
temporary file behind, and the package's writers (policy file, resume state, curves PNG) use it."""
import os
import stat

import pytest
import torch

from dp_fast import DiffusionPolicy, PolicyConfig, load_policy
from dp_fast.atomic_file import atomic_write
from dp_fast.train.curves import plot_curves
from dp_fast.train.resume import write_state
from tests.data.make_hdf5 import SMALL_META


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _tiny_policy() -> DiffusionPolicy:
    torch.manual_seed(0)
    return DiffusionPolicy(PolicyConfig(shape_meta=SMALL_META, crop_shape=(7, 5), n_layer=1, n_emb=32,
                                        vision_width=16))


def test_written_files_get_the_umask_mode(tmp_path, umask):
    want = 0o666 & ~umask  # what open(path, "w") gives a new file
    policy = _tiny_policy()
    policy.save(tmp_path / "p.safetensors")
    write_state({"global_step": 3}, tmp_path / "latest.train.pt")
    plot_curves(tmp_path / "curves.png", [{"global_step": 1, "train_loss": 0.5, "lr": 1e-4}], [])
    with atomic_write(tmp_path / "sub" / "x.txt") as tmp:  # the folder is created
        tmp.write_text("x")
    for name in ("p.safetensors", "latest.train.pt", "curves.png", "sub/x.txt"):
        assert _mode(tmp_path / name) == want, f"{name}: {_mode(tmp_path / name):o}, want {want:o}"
    # replacing a file gives the new file the umask mode too, whatever the old one had
    os.chmod(tmp_path / "p.safetensors", 0o600)
    policy.save(tmp_path / "p.safetensors")
    assert _mode(tmp_path / "p.safetensors") == want
    assert torch.equal(load_policy(tmp_path / "p.safetensors").model.head.bias, policy.model.head.bias)
    assert not [p.name for p in tmp_path.rglob(".*")], "no temporary file left behind"


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.bin"
    with atomic_write(path) as tmp:
        tmp.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="writer failed"):
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("writer failed")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_temporary_name_is_hidden_next_to_the_target(tmp_path):
    with atomic_write(tmp_path / "v.mp4", suffix=".tmp.mp4") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".v.mp4.") and tmp.name.endswith(".tmp.mp4")
        assert tmp.exists() and not (tmp_path / "v.mp4").exists()
        tmp.write_bytes(b"data")
    assert (tmp_path / "v.mp4").read_bytes() == b"data" and not tmp.exists()
