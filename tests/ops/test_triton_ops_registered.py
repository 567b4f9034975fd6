"""The Triton launchers as torch.library ops (dp_fast/ops/_triton_ops.py): schema, fake implementation and
dispatch checked by torch.library.opcheck, on CPU tensors in the interpreter (on CUDA tensors in tests/gpu)."""
import pytest
import torch

from dp_fast.ops import _triton_ops  # noqa: F401  (registers the ops)
from dp_fast.ops import add_noise_ref, ddpm_step_ref, random_crop_ref
from dp_fast.schedulers import NoiseScheduler
from dp_fast.config import SchedulerConfig
from tests.ops._helpers import B

try:
    B.resolve_op_backend("ddpm_step", "triton", "cpu")
    TRITON_CPU, WHY = True, ""
except B.BackendUnavailable as e:
    TRITON_CPU, WHY = False, str(e)
# Only the CPU-tensor tests need the interpreter. A module-wide skip would also skip the GPU test below
# on every GPU machine, where TRITON_INTERPRET is unset and Triton compiles instead.
needs_interpreter = pytest.mark.skipif(not TRITON_CPU, reason=f"triton backend unavailable on CPU tensors: {WHY}")


def _sched():
    return NoiseScheduler(SchedulerConfig())


@needs_interpreter
def test_ddpm_step_triton_op():
    g = torch.Generator().manual_seed(0)
    x, e, n = (torch.randn(3, 10, 7, generator=g) for _ in range(3))
    table, step = _sched().step_table(100), torch.tensor(37)
    out = torch.ops.dp_fast.ddpm_step_triton(x, e, n, table, step)
    torch.testing.assert_close(out, ddpm_step_ref(x, e, n, table, step), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.dp_fast.ddpm_step_triton, (x, e, n, table, step))


@needs_interpreter
def test_add_noise_triton_op():
    g = torch.Generator().manual_seed(1)
    x, n = torch.randn(5, 10, 7, generator=g), torch.randn(5, 10, 7, generator=g)
    t = torch.randint(0, 100, (5,), generator=g)
    abar = _sched().alphas_cumprod.float().contiguous()
    out = torch.ops.dp_fast.add_noise_triton(x, n, t, abar)
    torch.testing.assert_close(out, add_noise_ref(x, n, t, abar), rtol=1e-5, atol=1e-5)
    torch.library.opcheck(torch.ops.dp_fast.add_noise_triton, (x, n, t, abar))


@needs_interpreter
@pytest.mark.parametrize("normalize", [True, False])
def test_random_crop_triton_op(normalize):
    g = torch.Generator().manual_seed(2)
    img = torch.randint(0, 256, (4, 3, 20, 18), dtype=torch.uint8, generator=g)
    off = torch.stack([torch.randint(0, 8, (4,), generator=g), torch.randint(0, 6, (4,), generator=g)], 1)
    out = torch.ops.dp_fast.random_crop_triton(img, off, 13, 13, normalize)
    assert torch.equal(out, random_crop_ref(img, off, (13, 13), normalize=normalize))
    torch.library.opcheck(torch.ops.dp_fast.random_crop_triton, (img, off, 13, 13, normalize))


@pytest.mark.gpu
def test_triton_ops_on_cuda_opcheck_and_graph_capture():
    dev = "cuda"
    x, e, n = (torch.randn(8, 10, 7, device=dev) for _ in range(3))
    table, step = _sched().to(dev).step_table(100), torch.tensor(3, device=dev)
    torch.library.opcheck(torch.ops.dp_fast.ddpm_step_triton, (x, e, n, table, step))
    ref = ddpm_step_ref(x, e, n, table, step)
    torch.ops.dp_fast.ddpm_step_triton(x, e, n, table, step)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.dp_fast.ddpm_step_triton(x, e, n, table, step)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    img = torch.randint(0, 256, (4, 3, 84, 84), dtype=torch.uint8, device=dev)
    off = torch.randint(0, 9, (4, 2), device=dev)
    torch.library.opcheck(torch.ops.dp_fast.random_crop_triton, (img, off, 76, 76, True))
    t = torch.randint(0, 100, (8,), device=dev)
    abar = _sched().alphas_cumprod.float().to(dev)
    torch.library.opcheck(torch.ops.dp_fast.add_noise_triton, (x, n, t, abar))
