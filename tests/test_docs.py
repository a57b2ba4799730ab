"""`make docs`: the site builds with `mkdocs build --strict` (no broken link, no missing page).
Slow (about 10 s: the tour notebook and the API reference are rendered); `make test-all` runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs")
    out = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (out / "index.html").is_file()
    api = (out / "api" / "index.html").read_text()
    assert "detect_dataset" in api  # the reference is generated from the docstrings
    tour = (out / "experiments" / "tour" / "index.html").read_text()
    assert "data:image/png;base64" in tour  # the notebook rendered with its pictures
    assert (out / "experiments" / "results" / "family" / "family.png").is_file()
