"""A real browser for tests: Debian's chromium, driven by Playwright.

Playwright never downloads a browser here (no ``playwright install``): it launches the
system's chromium (``MQSERVE_CHROMIUM``, else ``chromium`` on PATH, else
``/usr/bin/chromium``), which ``.ci/run`` installs with apt.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Why browser tests skip when no chromium is found.
NO_CHROMIUM = ("no chromium found: install Debian's (apt-get install chromium; .ci/run does) "
               "or set MQSERVE_CHROMIUM to its path")


def find_chromium() -> str | None:
    for candidate in (os.environ.get("MQSERVE_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@contextmanager
def chromium(path: str) -> Iterator[Any]:
    """A headless chromium (a Playwright ``Browser``), closed, with its processes, on exit."""
    from playwright.sync_api import sync_playwright

    driver = sync_playwright().start()
    try:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        browser = driver.chromium.launch(executable_path=path, headless=True,
                                         args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()
    finally:
        driver.stop()
