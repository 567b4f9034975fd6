"""Where the recorded fixtures (../shared/fixtures) live; tests skip when they are absent."""
import os
from pathlib import Path

import pytest

_REPO = Path(__file__).resolve().parents[1]


def fixtures_dir() -> Path:
    """First existing of $DP_FAST_FIXTURES, <repo>/../shared/fixtures, /work/shared/fixtures."""
    candidates = []
    if os.environ.get("DP_FAST_FIXTURES"):
        candidates.append(Path(os.environ["DP_FAST_FIXTURES"]))
    candidates += [_REPO.parent / "shared" / "fixtures", Path("/work/shared/fixtures")]
    for c in candidates:
        if c.is_dir():
            return c
    pytest.skip("recorded fixtures not found (set DP_FAST_FIXTURES or provide ../shared/fixtures); "
                f"looked in {[str(c) for c in candidates]}")


@pytest.fixture(scope="session")
def variant_ckpt(tmp_path_factory):
    """The original-format variant checkpoint, decompressed once per session."""
    zstandard = pytest.importorskip("zstandard")
    src = fixtures_dir() / "dp_variant_ckpt" / "variant.ckpt.zst"
    if not src.is_file():
        pytest.skip(f"{src} not found")
    dst = tmp_path_factory.getbasetemp() / "dp_variant_ckpt" / "variant.ckpt"
    if not dst.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_suffix(".part")
        with open(src, "rb") as fin, open(tmp, "wb") as fout:
            zstandard.ZstdDecompressor(max_window_size=2**28).copy_stream(fin, fout)
        tmp.rename(dst)
    return dst
