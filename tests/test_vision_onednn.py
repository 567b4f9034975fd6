"""The `cpu` backend's oneDNN observation encoder against the reference encoder (fresh random inputs), and its
bf16 convolutions against a plain-PyTorch emulation of their arithmetic."""
import pytest
import torch
import torch.nn.functional as F

from dp_fast import DiffusionPolicy, PolicyConfig
from dp_fast.backends import onednn_status, resolve
from dp_fast.models.vision_onednn import OnednnEncoder, _PackedCore, native_bf16
from tests.test_policy import random_obs, small_config

pytestmark = pytest.mark.skipif(not onednn_status()[0], reason=onednn_status()[1])
TOL = 1e-4


def _nobs(policy, batch, seed):
    torch.manual_seed(seed)
    return policy.prepare_obs(random_obs(policy.config, batch))[0]


@pytest.mark.parametrize("batch", [1, 3])
def test_seed_encoder_features_equal_reference(batch):
    torch.manual_seed(0)
    p = DiffusionPolicy(PolicyConfig(), backend="reference").eval()
    enc = OnednnEncoder(p.obs_encoder)
    nobs = _nobs(p, batch, seed=batch)
    with torch.no_grad():
        ref = p.obs_encoder(nobs)
        fast = enc.run(nobs)
    assert fast.shape == ref.shape
    assert (fast - ref).abs().max().item() <= TOL


def test_other_widths_random_eval_crops_and_weight_changes():
    torch.manual_seed(1)
    p = DiffusionPolicy(small_config(vision_width=16, eval_fixed_crop=False), backend="reference").eval()
    enc = OnednnEncoder(p.obs_encoder)
    nobs = _nobs(p, 2, seed=7)
    with torch.no_grad():
        ref = p.obs_encoder(nobs, generator=torch.Generator().manual_seed(3))
        fast = enc.run(nobs, generator=torch.Generator().manual_seed(3))  # the same random crops drawn
        assert (fast - ref).abs().max().item() <= TOL
        for prm in p.obs_encoder.parameters():  # an in-place update (an optimizer / EMA step): packed again
            prm.mul_(1.5)
        ref2 = p.obs_encoder(nobs, generator=torch.Generator().manual_seed(3))
        fast2 = enc.run(nobs, generator=torch.Generator().manual_seed(3))
    assert (ref2 - ref).abs().max().item() > 1e-2
    assert (fast2 - ref2).abs().max().item() <= TOL


@pytest.mark.parametrize("residual,relu", [(False, True), (True, True), (False, False)])
def test_group_norm_act_equals_torch(residual, relu):
    from dp_fast import _ext

    _ext.require()
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 64, 7, 5, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    r = torch.randn(3, 64, 7, 5, generator=g).contiguous(memory_format=torch.channels_last) if residual else None
    ref = torch.nn.functional.group_norm(x, 4, w, b, 1e-5) + (r if residual else 0)
    ref = ref.clamp_min(0) if relu else ref
    out = torch.ops.dp_fast.group_norm_act(x, w, b, 4, 1e-5, r, relu)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert (out - ref).abs().max().item() <= 1e-5
    with pytest.raises(RuntimeError, match="channels_last"):
        torch.ops.dp_fast.group_norm_act(x.contiguous(), w, b, 4, 1e-5, None, relu)
    with pytest.raises(RuntimeError, match="must divide the 64 channels"):
        torch.ops.dp_fast.group_norm_act(x, w, b, 5, 1e-5, None, relu)


def test_inference_only():
    p = DiffusionPolicy(small_config(vision_width=16), backend="reference").eval()
    with pytest.raises(RuntimeError, match="inference"):
        OnednnEncoder(p.obs_encoder).run(_nobs(p, 1, seed=0))


def test_cpu_backend_resolves_to_it_and_predicts_the_reference_actions(monkeypatch):
    assert resolve("cpu").encoder == "onednn"
    assert resolve("reference").encoder == "reference"
    monkeypatch.setenv("DP_FAST_CPU_ENCODER", "reference")
    assert resolve("cpu").encoder == "reference"
    monkeypatch.delenv("DP_FAST_CPU_ENCODER")
    torch.manual_seed(2)
    cfg = small_config(vision_width=16)
    ref = DiffusionPolicy(cfg, backend="reference").eval()
    fast = DiffusionPolicy(cfg, backend="cpu").eval()
    fast.load_state_dict(ref.state_dict())
    assert fast.describe_backends()["obs_encoder"].startswith("onednn")
    obs = random_obs(cfg, 2)
    noise = torch.randn(ref.noise_draws(), *ref.trajectory_shape(2))
    with torch.no_grad():
        a = ref.predict_action(obs, noise=noise)["action"]
        b = fast.predict_action(obs, noise=noise)["action"]
    assert fast._onednn is not None  # the oneDNN encoder ran
    assert (a - b).abs().max().item() <= TOL
    # with grad on (training), encode_obs runs the reference ResNets, whose graph autograd can follow
    nobs, batch = fast.prepare_obs(obs)
    feats = fast.encode_obs(nobs, batch)
    assert feats.requires_grad


needs_native_bf16 = pytest.mark.skipif(not native_bf16(), reason="oneDNN has no native bf16 on this CPU")


def _emulated_conv(c, x):
    """c(x) with x and the weight rounded to bf16, fp32 accumulation, the output rounded to bf16."""
    r = lambda t: None if t is None else t.to(torch.bfloat16).float()
    return r(F.conv2d(r(x), r(c.weight), r(c.bias), c.stride, c.padding, c.dilation, c.groups))


@needs_native_bf16
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_convolutions_match_their_emulation(batch, monkeypatch):
    """Layer by layer (each convolution on the input the bf16 encoder gave it): the emulation's values up to
    one bf16 rounding of the few outputs that fp32 summation order moves across a tie. Over the 20 layers
    such flips spread, so end to end the features are only held to the bf16-vs-fp32 bound."""
    torch.manual_seed(0)
    p = DiffusionPolicy(PolicyConfig(), backend="reference").eval()
    enc = OnednnEncoder(p.obs_encoder, torch.bfloat16)
    calls = []
    conv = _PackedCore.conv

    def recording(self, c, x):
        out = conv(self, c, x)
        calls.append((c, x, out))
        return out

    monkeypatch.setattr(_PackedCore, "conv", recording)
    nobs = _nobs(p, batch, seed=batch)
    with torch.no_grad():
        ref = p.obs_encoder(nobs)
        fast = enc.run(nobs)
        assert len(calls) == 2 * 20  # two cameras x (stem + 16 block + 3 downsample convolutions)
        for c, x, out in calls:
            emulated = _emulated_conv(c, x)
            diff = (out - emulated).abs()
            assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
            assert (diff > 0).float().mean().item() <= 2e-3
            assert (diff <= 2 ** -7 * emulated.abs() + 1e-6).all()
    err = (fast - ref).abs().max().item()
    assert 0 < err <= 0.05 * max(ref.abs().max().item(), 1.0), err


@needs_native_bf16
def test_policy_bf16_precision_switches_the_encoder():
    torch.manual_seed(0)
    p = DiffusionPolicy(small_config(), backend="cpu").eval()
    assert p.describe_backends()["obs_encoder"].endswith("[fp32]")
    nobs = _nobs(p, 2, seed=5)
    with torch.no_grad():
        fp32 = p.encode_obs(nobs, 2)
        p.set_precision("bf16")
        assert p.describe_backends()["obs_encoder"].endswith("[bf16 convolutions]")
        bf16 = p.encode_obs(nobs, 2)
        p.set_precision("fp32")
        again = p.encode_obs(nobs, 2)
    assert (bf16 - fp32).abs().max().item() > 0
    assert (again - fp32).abs().max().item() == 0


def test_bf16_refused_where_not_native(monkeypatch):
    torch.manual_seed(0)
    p = DiffusionPolicy(small_config(), backend="reference").eval()
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        OnednnEncoder(p.obs_encoder, torch.float16)
    monkeypatch.setattr("dp_fast.models.vision_onednn.native_bf16", lambda: False)
    with pytest.raises(ValueError, match="native bf16"):
        OnednnEncoder(p.obs_encoder, torch.bfloat16)
