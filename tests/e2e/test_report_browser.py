"""report.html in a real headless Chromium: every inlined plot decodes and is painted, offline.

The page's own inline script records, on ``load``, how many images are ``complete`` with a
``naturalWidth > 0`` (``<body data-images-loaded=... data-images-total=...>``); ``--dump-dom`` reads
that back. A screenshot then shows the plots were painted (a text-only page has almost no saturated
pixels). The report is opened from a directory of its own, without its ``plots/`` folder, so
anything it did not inline would be missing.

Without a browser the test is skipped, except under ``CI=true`` where it fails: CI installs
Chromium in ``.ci/run``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from selfsup.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WINDOW = (1200, 5000)


def _report_runs() -> ModuleType:
    """tests/unit/test_report.py, for its ``make_run`` (tests are not a package)."""
    path = Path(__file__).resolve().parents[1] / "unit" / "test_report.py"
    spec = importlib.util.spec_from_file_location("_report_runs", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser() -> str:
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        message = f"no headless browser found ({', '.join(BROWSERS)}); .ci/run installs chromium"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        browser,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _image_counts(browser: str, profile: Path, page: Path) -> tuple[int, int]:
    result = _chromium(browser, profile, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    body = re.search(r"<body\b[^>]*>", result.stdout)
    assert body, f"no DOM from the browser (exit {result.returncode}): {result.stderr[-2000:]}"
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    assert loaded and total, f"the page's load script did not run: {body.group(0)}"
    return int(loaded.group(1)), int(total.group(1))


def _saturated_fraction(browser: str, profile: Path, page: Path, shot: Path) -> float:
    width, height = WINDOW
    result = _chromium(
        browser,
        profile,
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        f"--screenshot={shot}",
        page.as_uri(),
    )
    assert shot.exists(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as image:
        assert image.size == WINDOW
        hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64)
    return float(((hsv[..., 1] > 100) & (hsv[..., 2] > 60)).mean())


def test_report_html_shows_every_plot_in_chromium(browser: str, tmp_path: Path) -> None:
    run = _report_runs().make_run(tmp_path)
    paths = write_report(run)
    expected = len(paths.plots)
    assert expected >= 8
    alone = tmp_path / "alone"  # no plots/ folder beside it: only what is inlined can show
    alone.mkdir()
    page = Path(shutil.copy(paths.html, alone / "report.html"))
    assert _image_counts(browser, tmp_path / "profile", page) == (expected, expected)

    # The check can fail: one image with an undecodable payload is counted as not loaded.
    broken = alone / "broken.html"
    html = page.read_text()
    broken.write_text(
        re.sub(r'src="data:image/png;base64,[^"]*"', 'src="data:image/png;base64,AAAA"', html, count=1)
    )
    assert _image_counts(browser, tmp_path / "profile", broken) == (expected - 1, expected)

    # Painted, not blank: the plots' colours cover the screenshot; without them the page is grey text.
    painted = _saturated_fraction(browser, tmp_path / "profile", page, tmp_path / "page.png")
    text_only = alone / "text.html"
    text_only.write_text(re.sub(r"<img [^>]*>", "", html))
    bare = _saturated_fraction(browser, tmp_path / "profile", text_only, tmp_path / "text.png")
    assert painted > 0.01 and bare < 0.002, (painted, bare)
