"""/api/doc works offline: Swagger UI's JavaScript, CSS and icon come from the package, not from a CDN.

Real headless Chromium (Debian's, never a downloaded one) against a real uvicorn server on 127.0.0.1. Every
request the page makes is recorded, and any to another host is refused, as it would be with no network.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
from browser import chromium, require_browser, service

require_browser()
from playwright.sync_api import Route, expect  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    with service(tmp_path_factory.mktemp("swagger_data"), cache_dir) as base_url:
        yield base_url


def test_the_doc_page_names_no_other_host(server: str) -> None:
    page = httpx.get(f"{server}/api/doc")
    assert page.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert urls, page.text
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    for url in urls:
        assert httpx.get(f"{server}{url}").status_code == 200, url


def test_swagger_renders_offline_in_chromium(server: str, tmp_path: Path) -> None:
    requests: list[str] = []
    refused: list[str] = []

    def offline(route: Route) -> None:  # no network: only the server itself answers
        if urlparse(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort("internetdisconnected")

    with chromium() as browser:
        context = browser.new_context(base_url=server, viewport={"width": 1200, "height": 900})
        context.route("**/*", offline)
        page = context.new_page()
        page.set_default_timeout(20_000)
        page.on("request", lambda request: requests.append(request.url))
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto("/api/doc")

        train = page.locator(".opblock.opblock-post").filter(
            has=page.locator(".opblock-summary-path", has_text=re.compile(r"^/v1/train$")))
        expect(train).to_be_visible()
        expect(page.locator(".opblock").first).to_be_visible()
        assert page.locator(".opblock").count() >= 5
        expect(page.locator(".info .title")).to_contain_text("photolabel")
        expect(page.get_by_text("Unable to render this definition")).to_have_count(0)
        page.screenshot(path=str(tmp_path / "swagger.png"), full_page=False)
        print(f"screenshot: {tmp_path / 'swagger.png'}")
        context.close()

    hosts = {urlparse(url).hostname for url in requests if urlparse(url).scheme not in ("data", "blob")}
    assert hosts == {"127.0.0.1"}, requests
    assert refused == []
    assert errors == []
    paths = {urlparse(url).path for url in requests}
    assert {"/api/doc", "/api/openapi.json", "/api/doc/assets/swagger-ui-bundle.js",
            "/api/doc/assets/swagger-ui.css"} <= paths, paths
