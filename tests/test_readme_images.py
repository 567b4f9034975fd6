"""The images the README shows are in the repository, are PNG files and stay small."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_images_exist_and_are_small_pngs():
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", (ROOT / "README.md").read_text())
    assert len(links) >= 2, links  # the training curves and a rollout still
    for link in links:
        path = ROOT / link
        assert path.is_file(), f"README shows {link}, which is not in the repository"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{link} is not a PNG"
        assert len(data) < 200 * 1024, f"{link}: {len(data) // 1024} KB, keep README images under 200 KB"
