"""Fidelity on the GPU: the recorded original checkpoint (../shared/fixtures/dp_variant_ckpt, written by the
original diffusion_policy code) loaded onto a CUDA device with every GPU backend gives the original's
recorded actions for the recorded observations and noise.

Strict float32 (TF32 off for matrix products and cuDNN convolutions), so the tolerance is the CPU tests'
(1e-4 on the actions; the original's own fast-path vs plain-path difference is ~1e-6). Each test prints its
errors (`pytest -rA` shows them); benchmarks/gpu_first.sh --rerun runs this file with carried fixtures.

Fixtures: DP_FAST_FIXTURES (or ../shared/fixtures); DP_FAST_VARIANT_CKPT may name an already decompressed
variant.ckpt (where the zstandard module is missing). Marked `gpu`: skipped without a CUDA device.
"""
import os
from pathlib import Path

import pytest
import torch

from dp_fast import load_policy
from tests.fixtures_path import fixtures_dir

pytestmark = pytest.mark.gpu
BACKENDS = ["reference", "cuda", "triton"]
ATOL = 1e-4


@pytest.fixture(scope="module")
def ckpt_path(request):
    given = os.environ.get("DP_FAST_VARIANT_CKPT")
    if given:
        path = Path(given)
        assert path.is_file(), f"DP_FAST_VARIANT_CKPT={given}: no such file"
        return path
    return request.getfixturevalue("variant_ckpt")


@pytest.fixture(scope="module")
def expected():
    path = fixtures_dir() / "dp_variant_ckpt" / "variant_expected.pt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return torch.load(path, weights_only=True)


@pytest.fixture
def strict_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cuda(d):
    return {k: v.cuda() for k, v in d.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_original_checkpoint_actions_on_gpu(backend, ckpt_path, expected, strict_fp32):
    policy = load_policy(ckpt_path, device="cuda", backend=backend)
    assert next(policy.parameters()).device.type == "cuda"
    noise = expected["noise"].cuda()
    with torch.no_grad():
        res = policy.predict_action(_cuda(expected["obs"]), noise=noise)
        res8 = policy.predict_action(_cuda({**expected["obs"], **expected["obs_uint8"]}), noise=noise)
    errs = {
        "action_pred": (res["action_pred"].float().cpu() - expected["action_pred"]).abs().max().item(),
        "action": (res["action"].float().cpu() - expected["action"]).abs().max().item(),
        "action_from_uint8": (res8["action"].float().cpu() - expected["action"]).abs().max().item(),
    }
    print(f"fidelity {backend}: max abs error vs the original's recording: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    assert res["action"].shape == expected["action"].shape
    for key, err in errs.items():
        assert err <= ATOL, f"{backend}: {key} differs from the original's by {err:.3g} (> {ATOL})"


def test_original_checkpoint_modules_on_gpu(ckpt_path, expected, strict_fp32):
    """The obs encoder and one transformer forward of the reference modules on the device."""
    policy = load_policy(ckpt_path, device="cuda", backend="reference")
    nobs, _ = policy.prepare_obs(_cuda(expected["obs"]))
    t = expected["transformer"]
    with torch.no_grad():
        feats = policy.obs_encoder(nobs).cpu()
        out = policy.model(t["sample"].cuda(), t["timestep"].cuda(), t["cond"].cuda()).cpu()
    e_feat = (feats - expected["obs_encoder"]["features"]).abs().max().item()
    e_out = (out - t["out"]).abs().max().item()
    print(f"fidelity modules: obs encoder features {e_feat:.2e}, transformer out {e_out:.2e}")
    assert e_feat <= ATOL and e_out <= ATOL, (e_feat, e_out)
