"""What the Chromium page tests share: Debian's Chromium driven by Playwright (never a downloaded
browser), its flags, and a real service on 127.0.0.1 for the page to talk to.

A test module calls :func:`require_browser` at import, before it imports Playwright's names, so that
it is skipped (not failed) on a machine without Chromium or Playwright.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from support import running_uvicorn

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def require_browser() -> None:
    """Skip the calling test module when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"browser tests need Chromium at {CHROMIUM}, which is missing", allow_module_level=True)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need the Python package 'playwright', which is not installed",
                    allow_module_level=True)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (a Playwright ``Browser``), closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def service(data_dir: Path, cache_dir: Path) -> Iterator[str]:
    """``photolabel serve``'s app with its settings read from the environment as a user's would be (only
    DATA_DIR and the cache set, private URLs refused), on a real uvicorn server; its base URL."""
    from photolabel.adapters.http.app import create_app
    from photolabel.adapters.http.settings import ServiceSettings

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DATA_DIR", str(data_dir))
        mp.setenv("PHOTOLABEL_CACHE_DIR", str(cache_dir))
        mp.delenv("ALLOW_PRIVATE_URLS", raising=False)
        with running_uvicorn(create_app(ServiceSettings())) as base_url:
            yield base_url
