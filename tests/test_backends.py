"""dp_fast.backends: what available_backends() reports, policy_backend / resolve and resolve_op_backend."""
import pytest
import torch

import dp_fast
import dp_fast.backends as B
import dp_fast.policy as policy_mod
from dp_fast import DiffusionPolicy, _ext
from tests.test_policy import random_obs
from tests.test_sampling import cfg_of


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("DP_FAST_BACKEND", raising=False)


def fake_backends(monkeypatch, **available):
    """Make available_backends() (and the op resolution's status checks) report the given availability."""
    for name in ("triton", "cpu", "cuda"):
        ok = available.get(name, False)
        monkeypatch.setitem(B._STATUS, name, lambda ok=ok, name=name: (ok, f"fake {name}"))


def test_backends_lists_every_name_with_a_reason():
    info = dp_fast.available_backends()
    assert list(info) == list(B.NAMES) == ["reference", "triton", "cpu", "cuda", "auto"]
    for name, entry in info.items():
        assert set(entry) == {"available", "reason"} and isinstance(entry["available"], bool)
        assert isinstance(entry["reason"], str) and entry["reason"], name
    assert info["reference"]["available"] and info["auto"]["available"]
    assert info["cpu"]["available"] == _ext.load()
    if not info["cpu"]["available"]:
        assert info["cpu"]["reason"] == _ext.unavailable_reason()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only report")
def test_cpu_only_machine_reports_cuda_unavailable_and_triton_interpreter(monkeypatch):
    info = B.available_backends()
    assert not info["cuda"]["available"]
    assert "CUDA" in info["cuda"]["reason"] or "cuda" in info["cuda"]["reason"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    tri = B.available_backends()["triton"]
    assert tri["available"] and "interpreter, slow" in tri["reason"]
    monkeypatch.delenv("TRITON_INTERPRET")
    tri = B.available_backends()["triton"]
    assert not tri["available"] and "TRITON_INTERPRET=1" in tri["reason"]


def test_triton_not_importable(monkeypatch):
    monkeypatch.setattr(B, "_triton_import", (False, "ImportError: no module named triton"))
    tri = B.available_backends()["triton"]
    assert not tri["available"] and "pip install" in tri["reason"] and "no module named triton" in tri["reason"]


# ------------------------------------------------------------------------------ policy_backend / resolve
def test_policy_auto_on_cpu(no_env, monkeypatch):
    fake_backends(monkeypatch, cpu=True)
    assert B.policy_backend(None) == "cpu"
    assert B.policy_backend("auto", device="cpu") == "cpu"
    fake_backends(monkeypatch, cpu=False)
    assert B.policy_backend(None, device="cpu") == "reference"
    with pytest.raises(B.BackendUnavailable, match="backend 'cpu' is not available: fake cpu"):
        B.policy_backend("cpu")


def test_policy_auto_on_cuda(no_env, monkeypatch):
    monkeypatch.setattr(B, "_cuda_available", lambda: True)
    fake_backends(monkeypatch, cuda=True, triton=True)
    assert B.policy_backend(None, device="cuda") == "cuda"
    assert B.policy_backend(None, device=torch.device("cuda", 0)) == "cuda"
    fake_backends(monkeypatch, triton=True)
    assert B.policy_backend(None, device="cuda") == "triton"
    fake_backends(monkeypatch)
    assert B.policy_backend("auto", device="cuda:0") == "reference"


def test_policy_auto_on_cuda_ignores_the_interpreter(no_env, monkeypatch):
    monkeypatch.setattr(B, "_cuda_available", lambda: False)
    fake_backends(monkeypatch, triton=True)
    assert B.policy_backend(None, device="cuda") == "reference"


def test_policy_named_backends(no_env, monkeypatch):
    assert B.policy_backend("reference") == "reference"
    fake_backends(monkeypatch, triton=True)
    assert B.policy_backend("triton") == "triton"
    with pytest.raises(B.BackendUnavailable, match=r"backend 'cuda' is not available: fake cuda\. Use backend='auto'"):
        B.policy_backend("cuda")
    with pytest.raises(ValueError, match=r"backend must be one of \['reference', 'triton', 'cpu', 'cuda', 'auto'\]"):
        B.policy_backend("gpu")
    assert issubclass(B.BackendUnavailable, RuntimeError)


def test_policy_env_var(monkeypatch):
    monkeypatch.setenv("DP_FAST_BACKEND", "reference")
    assert B.policy_backend(None) == "reference"
    assert B.policy_backend("auto") in ("cpu", "reference")  # the argument wins over the env var
    monkeypatch.setenv("DP_FAST_BACKEND", "nope")
    with pytest.raises(ValueError, match="'nope'"):
        B.policy_backend(None)
    fake_backends(monkeypatch)
    monkeypatch.setenv("DP_FAST_BACKEND", "cuda")
    with pytest.raises(B.BackendUnavailable):
        B.policy_backend(None)


def test_resolve_sampler_and_ops(no_env, monkeypatch):
    """One Resolution per (request, device): the sampler kind and every op's backend."""
    fake_backends(monkeypatch, cpu=True, triton=True, cuda=True)
    monkeypatch.setattr(B, "_cuda_available", lambda: True)
    r = B.resolve(None, "cpu")
    assert (r.backend, r.sampler, r.device) == ("cpu", "cpu", torch.device("cpu"))
    assert r.ops == {"ddpm_step": "cpu", "add_noise": "cpu", "random_crop": "cpu", "attention": "reference"}
    r = B.resolve("auto", "cuda")
    assert (r.backend, r.sampler) == ("cuda", "cuda_graph")
    assert r.ops == {"ddpm_step": "cuda", "add_noise": "cuda", "random_crop": "cuda", "attention": "triton"}
    r = B.resolve("triton", "cuda:0")
    assert r.sampler == "cuda_graph" and set(r.ops.values()) == {"triton"}
    r = B.resolve("triton", "cpu")   # the interpreter on a CPU policy: the graph loop, uncaptured
    assert r.sampler == "eager" and set(r.ops.values()) == {"triton"}
    r = B.resolve("reference", "cuda")
    assert r.sampler == "reference" and set(r.ops.values()) == {"reference"}
    assert set(B.SAMPLERS) == {"reference", "cpu", "cuda_graph", "eager"}


def test_resolve_backend_on_the_wrong_device(no_env, monkeypatch):
    fake_backends(monkeypatch, cpu=True, cuda=True)
    monkeypatch.setattr(B, "_cuda_available", lambda: True)
    with pytest.raises(B.BackendUnavailable, match="backend 'cuda' needs the policy on a CUDA device"):
        B.resolve("cuda", "cpu")
    with pytest.raises(B.BackendUnavailable, match="backend 'cpu' runs the C\\+\\+ CPU loop, but the policy is on cuda"):
        B.resolve("cpu", "cuda")
    assert B.policy_backend("cuda", "cpu") == "cuda"   # building on the CPU and moving later is fine


def test_policy_resolves_once_per_device(no_env, monkeypatch):
    """predict_action resolves on the first call and again only after the policy moved."""
    calls = []
    real = B.resolve
    monkeypatch.setattr(policy_mod, "resolve", lambda *a: calls.append(a) or real(*a))
    p = DiffusionPolicy(cfg_of(num_inference_steps=2)).eval()
    obs = random_obs(p.config, 1)
    for _ in range(3):
        p.predict_action(obs)
    assert len(calls) == 1
    p.to(torch.float32)   # same device: nothing to resolve again
    p.predict_action(obs)
    assert len(calls) == 1


# ------------------------------------------------------------------------------ resolve_op_backend
def test_ops_list():
    assert list(B.OPS) == ["ddpm_step", "add_noise", "random_crop", "attention"]
    assert B.OPS["attention"] == ("triton",)


@pytest.mark.parametrize("op", ["ddpm_step", "add_noise", "random_crop"])
def test_op_auto(op, no_env, monkeypatch):
    fake_backends(monkeypatch, cpu=True, triton=True, cuda=True)
    monkeypatch.setattr(B, "_cuda_available", lambda: True)
    assert B.resolve_op_backend(op, "auto", "cpu") == "cpu"  # never the slow interpreter
    assert B.resolve_op_backend(op, None, "cuda") == "cuda"
    fake_backends(monkeypatch, triton=True)
    assert B.resolve_op_backend(op, "auto", "cpu") == "reference"
    assert B.resolve_op_backend(op, "auto", "cuda") == "triton"
    fake_backends(monkeypatch)
    assert B.resolve_op_backend(op, "auto", "cuda") == "reference"


def test_op_named_on_the_wrong_device(no_env, monkeypatch):
    fake_backends(monkeypatch, cpu=True, triton=True, cuda=True)
    with pytest.raises(B.BackendUnavailable, match=r"backend 'cpu' runs C\+\+ CPU kernels, but the tensors are on cuda"):
        B.resolve_op_backend("ddpm_step", "cpu", "cuda")
    with pytest.raises(B.BackendUnavailable, match="backend 'cuda' runs CUDA kernels, but the tensors are on cpu"):
        B.resolve_op_backend("add_noise", "cuda", "cpu")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(B.BackendUnavailable, match="needs the Triton interpreter"):
        B.resolve_op_backend("random_crop", "triton", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert B.resolve_op_backend("random_crop", "triton", "cpu") == "triton"
    assert B.resolve_op_backend("random_crop", "reference", "cuda") == "reference"
    assert B.resolve_op_backend("random_crop", "cuda", "cuda") == "cuda"


def test_op_named_but_unavailable(no_env, monkeypatch):
    fake_backends(monkeypatch)
    with pytest.raises(B.BackendUnavailable, match="backend 'cpu' is not available: fake cpu"):
        B.resolve_op_backend("ddpm_step", "cpu", "cpu")
    with pytest.raises(B.BackendUnavailable, match="backend 'cuda' is not available"):
        B.resolve_op_backend("ddpm_step", "cuda", "cuda")


def test_op_without_that_implementation(no_env, monkeypatch):
    fake_backends(monkeypatch, cpu=True, triton=True, cuda=True)
    monkeypatch.setattr(B, "_cuda_available", lambda: True)
    assert B.resolve_op_backend("attention", "auto", "cpu") == "reference"
    assert B.resolve_op_backend("attention", "auto", "cuda") == "triton"
    for name in ("cpu", "cuda"):
        with pytest.raises(B.BackendUnavailable, match=f"attention: there is no '{name}' implementation"):
            B.resolve_op_backend("attention", name, "cuda")


def test_op_bad_names(no_env):
    with pytest.raises(ValueError, match=r"op must be one of \['ddpm_step', 'add_noise', 'random_crop', 'attention'\]"):
        B.resolve_op_backend("softmax", "auto", "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        B.resolve_op_backend("ddpm_step", "fast", "cpu")
    with pytest.raises(B.BackendUnavailable, match="device type 'mps'"):
        B.resolve_op_backend("ddpm_step", "auto", "mps")


def test_op_real_machine(no_env):
    """On this machine, without fakes: the C++ CPU ops are what auto picks for CPU tensors when built."""
    want = "cpu" if _ext.load() else "reference"
    assert all(B.resolve_op_backend(op, "auto", "cpu") == want for op in ("ddpm_step", "add_noise", "random_crop"))
