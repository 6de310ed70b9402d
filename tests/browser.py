"""Headless Chromium for tests: a page's DOM after it loaded (``--dump-dom``), or a skip if none is installed."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def chromium_dom(url: str, profile: Path, *flags: str) -> str:
    """The DOM of ``url`` after load, as headless Chromium renders it; ``profile`` is a fresh user-data dir."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         *flags, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return dom.stdout
