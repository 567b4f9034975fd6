"""ONNX export (dp_fast.export): ONNX Runtime's outputs equal the reference's for the same inputs and noise."""
import json

import numpy as np
import pytest
import torch

from dp_fast import SchedulerConfig, export_onnx
from dp_fast.cli import main as cli_main
from dp_fast.export import ExportError
from dp_fast.normalizer import LinearNormalizer
from tests.test_policy import small_config

ort = pytest.importorskip("onnxruntime", reason="the export extra (pip install 'dp-fast[export]')")
pytest.importorskip("onnxscript", reason="the export extra (pip install 'dp-fast[export]')")

TOL = 1e-4


def _policy(seed=0, **kw):
    from dp_fast import DiffusionPolicy

    torch.manual_seed(seed)
    p = DiffusionPolicy(small_config(vision_width=16, **kw), backend="reference").eval()
    norm = LinearNormalizer()  # a non-trivial normalizer, so that the graphs must carry it
    for key, meta in p.config.shape_meta["obs"].items():
        if meta.get("type") == "rgb":
            norm.set_field(key, torch.tensor([2.0]), torch.tensor([-1.0]))
        else:
            n = meta["shape"][0]
            norm.set_field(key, torch.rand(n) + 0.5, torch.randn(n) * 0.1)
    norm.set_field("action", torch.rand(p.action_dim) + 0.5, torch.randn(p.action_dim) * 0.1)
    p.set_normalizer(norm)
    return p


def _inputs(p, batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, meta in p.config.shape_meta["obs"].items():
        shape = (batch, p.n_obs_steps, *meta["shape"])
        obs[key] = torch.rand(shape, generator=g) if meta.get("type") == "rgb" else torch.randn(shape, generator=g)
    noise = torch.randn((p.noise_draws(), *p.trajectory_shape(batch)), generator=g)
    return obs, noise


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(sess, feed):
    return sess.run(None, {k: np.ascontiguousarray(v.numpy()) for k, v in feed.items()})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    p = _policy()
    out = tmp_path_factory.mktemp("onnx")
    files = export_onnx(p, out, batch=2)
    return p, out, files


def test_every_graph_matches_the_reference(exported):
    p, out, files = exported
    assert sorted(files) == ["denoiser", "encoder", "policy"]
    obs, noise = _inputs(p, 2)
    with torch.no_grad():
        ref = p.predict_action(obs, noise=noise)
        nobs, b = p.prepare_obs(obs)
        feats = p.encode_obs(nobs, b)
    (cond,) = _run(_session(files["encoder"]), obs)
    assert cond.shape == tuple(feats.shape)
    assert np.abs(cond - feats.numpy()).max() <= TOL
    action, action_pred = _run(_session(files["policy"]), dict(obs, noise=noise))
    assert action.shape == tuple(ref["action"].shape) and action_pred.shape == tuple(ref["action_pred"].shape)
    assert np.abs(action - ref["action"].numpy()).max() <= TOL
    assert np.abs(action_pred - ref["action_pred"].numpy()).max() <= TOL
    x = torch.randn(p.trajectory_shape(2))
    t = torch.tensor([3, 17])
    (eps,) = _run(_session(files["denoiser"]), {"sample": x, "timestep": t, "cond": feats})
    with torch.no_grad():
        assert np.abs(eps - p.model(x, t, feats).numpy()).max() <= TOL


def test_manifest_drives_a_host_loop_to_the_reference_actions(exported):
    """export.json holds what a runtime needs to run its own loop over denoiser.onnx: the timesteps, the
    noise plan and the step coefficients (columns a..hi of NoiseScheduler.step_table)."""
    p, out, files = exported
    m = json.loads((out / "export.json").read_text())
    assert m["batch"] == 2 and m["scheduler"]["num_inference_steps"] == p.num_inference_steps
    assert [o["name"] for o in m["observations"]] == list(p.config.shape_meta["obs"])
    assert m["policy"]["noise"]["shape"] == [p.noise_draws(), *p.trajectory_shape(2)]
    obs, noise = _inputs(p, 2, seed=5)
    (cond,) = _run(_session(files["encoder"]), obs)
    den = _session(files["denoiser"])
    cols = m["scheduler"]["step_table_columns"]
    x = noise[0].numpy()
    for i, (t, j) in enumerate(zip(m["scheduler"]["timesteps"], m["scheduler"]["noise_plan"])):
        r = dict(zip(cols, m["scheduler"]["step_table"][i]))
        (eps,) = den.run(None, {"sample": x, "timestep": np.full(2, t, np.int64), "cond": cond})
        x0 = np.clip(r["a"] * x + r["b"] * eps, r["lo"], r["hi"])
        e = r["c"] * x + r["d"] * eps  # the eps estimate (used by DDIM)
        x = (r["e"] * x0 + r["f"] * x + r["g"] * e + (r["sigma"] * noise[j].numpy() if j >= 0 else 0.0))
        x = x.astype(np.float32)
    with torch.no_grad():
        out = p.predict_action(obs, noise=noise)
    ref = out["action_pred"].numpy()
    un = m["action_unnormalize"]
    mine = (x[..., :p.action_dim] - np.array(un["offset"])) / np.array(un["scale"])
    assert np.abs(mine - ref).max() <= TOL
    start, count = m["action_steps"]["start"], m["action_steps"]["count"]
    assert np.abs(mine[:, start:start + count] - out["action"].numpy()).max() <= TOL


def test_inpainting_ddim_policy_graph(tmp_path):
    """obs_as_cond=False (observation features inpainted into the trajectory), DDIM with eta > 0 (K + 1 noise
    draws): the whole predict_action graph, and a denoiser without a cond input."""
    p = _policy(seed=3, obs_as_cond=False, num_inference_steps=4,
                scheduler=SchedulerConfig(kind="ddim", num_train_timesteps=20, eta=0.5))
    files = export_onnx(p, tmp_path, batch=1, parts=["policy", "denoiser"])
    assert not (tmp_path / "encoder.onnx").exists()
    obs, noise = _inputs(p, 1)
    assert noise.shape[0] == p.num_inference_steps + 1
    with torch.no_grad():
        ref = p.predict_action(obs, noise=noise)["action"].numpy()
    action, _ = _run(_session(files["policy"]), dict(obs, noise=noise))
    assert np.abs(action - ref).max() <= TOL
    assert [i.name for i in _session(files["denoiser"]).get_inputs()] == ["sample", "timestep"]


def test_bad_requests_write_nothing(tmp_path):
    p = _policy()
    with pytest.raises(ExportError, match="parts must be"):
        export_onnx(p, tmp_path / "a", parts=["encoder", "decoder"])
    with pytest.raises(ExportError, match="batch must be a positive int"):
        export_onnx(p, tmp_path / "a", batch=0)
    p.obs_encoder.eval_fixed_crop = False
    with pytest.raises(ExportError, match="eval_fixed_crop"):
        export_onnx(p, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    p.obs_encoder.eval_fixed_crop = True
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "export.json").write_text("{}")
    with pytest.raises(ExportError, match="exists; pass overwrite=True"):
        export_onnx(p, tmp_path / "b", parts=["denoiser"])
    assert sorted(f.name for f in (tmp_path / "b").iterdir()) == ["export.json"]


def test_cli_export(tmp_path, capsys):
    p = _policy()
    p.save(tmp_path / "p.safetensors")
    assert cli_main(["export", "--policy", str(tmp_path / "p.safetensors"), "--out", str(tmp_path / "x"),
                     "--parts", "encoder"]) == 0
    assert "encoder.onnx" in capsys.readouterr().out
    obs, _ = _inputs(p, 1)
    with torch.no_grad():
        nobs, b = p.prepare_obs(obs)
        feats = p.encode_obs(nobs, b).numpy()
    (cond,) = _run(_session(tmp_path / "x" / "encoder.onnx"), obs)
    assert np.abs(cond - feats).max() <= TOL
