"""dp_fast.ops.random_crop (+ offsets helpers, centre crop) on every backend against random_crop_ref."""
import pytest
import torch

from dp_fast.ops import center_crop, center_crop_offsets, random_crop, random_crop_offsets, random_crop_ref
from tests.ops._helpers import B, all_backends, fast_backends, seed_of

IMAGE_DTYPES = [torch.uint8, torch.float32, torch.bfloat16, torch.float16]
# (N, C, H, W, h, w): the seed crop 84 -> 76, a small odd crop, non-square, a full-height crop
CASES = [(2, 3, 84, 84, 76, 76), (7, 3, 20, 20, 13, 13), (1, 3, 20, 24, 13, 17), (3, 1, 9, 16, 9, 5)]


def images(n, c, h, w, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (n, c, h, w), generator=gen, dtype=torch.uint8)
    return torch.rand((n, c, h, w), generator=gen).to(dtype)


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("dtype", IMAGE_DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_given_offsets_bit_exact(backend, dtype, case):
    n, c, H, W, h, w = case
    x = images(n, c, H, W, dtype, seed_of(backend, dtype, case))
    gen = torch.Generator().manual_seed(seed_of(case))
    off = random_crop_offsets(n, (H, W), (h, w), generator=gen)
    off[0] = torch.tensor([H - h, W - w])  # the last offset, which the original never drew
    for normalize in (True, False):
        out = random_crop(x, off, (h, w), normalize=normalize, backend=backend)
        ref = random_crop_ref(x, off, (h, w), normalize)
        assert out.dtype == torch.float32 and out.shape == (n, c, h, w)
        assert torch.equal(out, ref)


def slice_crop(x, off, h, w):
    """The crop written as plain slicing, one image at a time."""
    return torch.stack([x[i, :, t:t + h, l:l + w] for i, (t, l) in enumerate(off.tolist())])


def test_reference_is_crop_plus_normalization():
    """The reference = a slice of the float image in [0, 1], then 2 v - 1."""
    x = images(3, 3, 20, 24, torch.uint8, 1)
    off = torch.tensor([[0, 0], [7, 7], [3, 5]])
    want = slice_crop(x.float() / 255.0, off, 13, 17) * 2.0 - 1.0
    assert torch.equal(random_crop_ref(x, off, (13, 17)), want)
    got = random_crop_ref(x, off, (13, 17))
    assert got.min() >= -1 and got.max() <= 1 and got.min() < -0.99 and got.max() > 0.99
    assert torch.equal(random_crop_ref(x, off, (13, 17), normalize=False), slice_crop(x.float() / 255.0, off, 13, 17))
    xf = torch.randn(3, 2, 20, 24)   # float input, normalize=False: the plain crop of the values given
    assert torch.equal(random_crop_ref(xf, off, (13, 17), normalize=False), slice_crop(xf, off, 13, 17))


@pytest.mark.parametrize("backend", all_backends())
def test_center_crop(backend):
    x = images(2, 3, 84, 84, torch.uint8, 2)
    assert center_crop_offsets(2, (84, 84), 76).tolist() == [[4, 4], [4, 4]]
    assert center_crop_offsets(1, (20, 25), (13, 17)).tolist() == [[4, 4]]  # round(3.5) = 4, round(4.0) = 4
    out = center_crop(x, (76, 76), backend=backend)
    assert torch.equal(out, x[:, :, 4:80, 4:80].float() / 255.0 * 2.0 - 1.0)


@pytest.mark.parametrize("case", [(84, 84, 76, 76), (20, 24, 13, 17)])
def test_every_offset_reachable(case):
    """Uniform draws reach every valid offset 0..H-h (incl. the last) about equally often; the original's
    off-by-one never reaches the last one. Seeded generator: deterministic, not flaky."""
    H, W, h, w = case
    n = 4000
    gen = torch.Generator().manual_seed(seed_of(case))
    off = random_crop_offsets(n, (H, W), (h, w), generator=gen)
    assert off.dtype == torch.int64 and off.shape == (n, 2)
    for col, m in ((0, H - h), (1, W - w)):
        counts = torch.bincount(off[:, col], minlength=m + 1)
        assert counts.numel() == m + 1 and (counts > 0).all(), counts
        expected = n / (m + 1)
        assert (counts - expected).abs().max() < 5 * expected ** 0.5, counts  # ~5 sigma
    orig = random_crop_offsets(n, (H, W), (h, w), generator=gen, mode="original")
    for col, m in ((0, H - h), (1, W - w)):
        counts = torch.bincount(orig[:, col], minlength=m + 1)
        assert counts[m] == 0 and (counts[:m] > 0).all(), counts


def test_offsets_full_size_crop_and_device():
    off = random_crop_offsets(5, (9, 16), (9, 5), device="cpu")
    assert off[:, 0].eq(0).all() and off[:, 1].le(11).all()


def test_large_batch():
    """The seed training batch, 64 x 2 cameras (C++ CPU only: too big for the Triton interpreter)."""
    backend = "cpu"
    if not B.available_backends()[backend]["available"]:
        pytest.skip(B.available_backends()[backend]["reason"])
    x = images(64 * 2, 3, 84, 84, torch.uint8, 3)
    off = random_crop_offsets(128, (84, 84), 76, generator=torch.Generator().manual_seed(0))
    assert torch.equal(random_crop(x, off, 76, backend=backend), random_crop_ref(x, off, 76))


def test_out_of_range_offsets():
    x = images(3, 3, 20, 20, torch.uint8, 4)
    off = torch.tensor([[0, 0], [8, 0], [0, 0]])
    with pytest.raises(RuntimeError, match=r"`offsets` \[top, left\] must lie in \[0, 7\] x \[0, 7\] .* got \[8, 0\] at index 1"):
        random_crop(x, off, 13, backend="cpu")
    with pytest.raises((IndexError, RuntimeError)):
        random_crop(x, off, 13, backend="reference")
    if B.triton_interpreter():
        out = random_crop(x, off, 13, backend="triton")
        assert out[1].isnan().all() and not out[[0, 2]].isnan().any()


def _bad():
    x = images(2, 3, 20, 20, torch.uint8, 5)
    off = torch.zeros(2, 2, dtype=torch.int64)
    return {
        "images dtype": ((x.int(), off, 13), TypeError, r"`images` must be uint8, float32, bfloat16 or float16, got int32"),
        "images 3-d": ((x[0], off, 13), ValueError, r"`images` must have shape \(\*, \*, \*, \*\), got \(3, 20, 20\)"),
        "offsets int32": ((x, off.int(), 13), TypeError, r"`offsets` must be int64, got int32"),
        "offsets shape": ((x, off[:1], 13), ValueError, r"`offsets` must have shape \(2, 2\), got \(1, 2\)"),
        "offsets device": ((x, off.to("meta"), 13), ValueError, r"`offsets` must be on the device of `images`"),
        "size too large": ((x, off, (21, 13)), ValueError, r"crop size \(21, 13\) must be at least 1 and at most the image size \(20, 20\)"),
        "size zero": ((x, off, 0), ValueError, r"crop size \(0, 0\)"),
        "size type": ((x, off, 13.0), TypeError, r"`size` must be an int or a pair of ints"),
    }


@pytest.mark.parametrize("backend", all_backends())
@pytest.mark.parametrize("case", list(_bad()))
def test_bad_input_names_the_argument(backend, case):
    args, exc, pattern = _bad()[case]
    with pytest.raises(exc, match=pattern):
        random_crop(*args, backend=backend)


@pytest.mark.parametrize("backend", fast_backends())
def test_fast_backends_need_contiguous(backend):
    x = images(2, 20, 20, 3, torch.uint8, 6).permute(0, 3, 1, 2)  # NHWC memory, NCHW view
    off = torch.zeros(2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=rf"backend '{backend}' needs `images` contiguous"):
        random_crop(x, off, 13, backend=backend)
    assert torch.equal(random_crop(x, off, 13, backend="reference"), random_crop_ref(x.contiguous(), off, 13))


def test_named_backend_never_falls_back():
    x = images(2, 3, 20, 20, torch.uint8, 7)
    with pytest.raises(B.BackendUnavailable, match="backend 'cuda'"):
        random_crop(x, torch.zeros(2, 2, dtype=torch.int64), 13, backend="cuda")


def test_opcheck_cpu():
    if not B.available_backends()["cpu"]["available"]:
        pytest.skip(B.available_backends()["cpu"]["reason"])
    x = images(3, 3, 20, 24, torch.uint8, 8)
    off = torch.tensor([[0, 0], [7, 7], [3, 5]])
    for args in ((x, off, 13, 17, True), (x.float() / 255, off, 13, 17, False)):
        torch.library.opcheck(torch.ops.dp_fast.random_crop.default, args)
