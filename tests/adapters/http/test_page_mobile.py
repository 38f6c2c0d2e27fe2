"""The web page on a phone (390 × 844 CSS pixels) and the wording of its errors, in real headless Chromium.

Debian's Chromium (never a downloaded one) against a real uvicorn server on 127.0.0.1 with one model trained
through the API. Nothing may be wider than the screen: not the model selector, not the per-class table.
Errors read as sentences: the page shows an error's message, never its code, and names a URL once.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from browser import chromium, require_browser, service

require_browser()
from playwright.sync_api import Browser, Page, Route, expect  # noqa: E402

LABELS = ("blouse", "halter", "sweater")
# long labels: the selector's option text and the table's first column are at their widest
LONG = {"blouse": "blouse-with-a-rather-long-label-name", "halter": "halter", "sweater": "sweater"}
PHONE = {"width": 390, "height": 844}
JOB_TIMEOUT_S = 90.0
CODE_PREFIX = re.compile(r"\b[a-z]+(?:_[a-z]+)+:")  # like "not_an_image:"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    with service(tmp_path_factory.mktemp("mobile_data"), cache_dir) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def model_id(server: str, small_data: Path) -> str:
    """A model trained through POST /v1/train on ``small_data``, one label renamed to a long name."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for label in LABELS:
            for image in sorted((small_data / label).glob("*.jpg")):
                tar.add(image, arcname=f"{LONG[label]}/{image.name}")
    with httpx.Client(base_url=server, timeout=30) as client:
        response = client.post("/v1/train", files={"data": ("d.tar.gz", buffer.getvalue(), "application/gzip")})
        assert response.status_code in (200, 202), response.text
        job_id = response.json()["job_id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("ready", "error"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
    assert job["status"] == "ready", job
    return job["model_id"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def phone(browser: Browser, server: str, model_id: str) -> Iterator[Page]:
    context = browser.new_context(base_url=server, viewport=PHONE, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        context.close()
    foreign = [url for url in requests
               if urlparse(url).scheme not in ("data", "blob") and urlparse(url).hostname != "127.0.0.1"]
    assert foreign == []
    assert errors == []


def open_with_model(page: Page, model_id: str) -> None:
    page.goto("/")
    select = page.get_by_test_id("model-select")
    expect(select.locator(f'option[value="{model_id}"]')).to_have_count(1)
    select.select_option(model_id)
    expect(page.get_by_test_id("model-id")).to_have_text(model_id)


def within_screen(page: Page, test_id: str) -> dict[str, Any]:
    box = page.get_by_test_id(test_id).bounding_box()
    assert box is not None, test_id
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"] + 0.5, (test_id, box)
    return box


def test_the_page_fits_a_phone(phone: Page, model_id: str, small_data: Path, tmp_path: Path) -> None:
    open_with_model(phone, model_id)
    expect(phone.get_by_test_id("per-class").locator("tbody tr")).to_have_count(len(LABELS))
    image = min((small_data / "halter").glob("*.jpg"))
    phone.get_by_test_id("predict-file").set_input_files(str(image))
    # the first prediction loads the model: allow for a busy machine
    expect(phone.get_by_test_id("predict-status")).to_have_text(image.name, timeout=60_000)
    expect(phone.get_by_test_id("predict-error")).to_be_hidden()
    expect(phone.get_by_test_id("predict-label")).to_be_visible()

    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert phone.evaluate("document.body.scrollWidth") <= PHONE["width"]
    for test_id in ("model-select", "per-class", "confusion-matrix", "predict-scores", "train-form", "drop-zone",
                    "model-details", "predict-sha256", "api-token"):
        within_screen(phone, test_id)
    # the per-class table's numbers are all on screen: its last column is inside the screen too
    last = phone.get_by_test_id("per-class").locator("tbody tr").first.locator("td").last.bounding_box()
    assert last is not None and last["x"] + last["width"] <= PHONE["width"] + 0.5, last
    # the selector can still be used: its options are the models
    assert phone.get_by_test_id("model-select").input_value() == model_id
    phone.screenshot(path=str(tmp_path / "phone.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'phone.png'}")


def test_an_error_is_a_sentence_not_a_code(phone: Page, model_id: str, tmp_path: Path) -> None:
    open_with_model(phone, model_id)
    bad = tmp_path / "notes.jpg"
    bad.write_text("these are notes, not a JPEG\n")
    phone.get_by_test_id("predict-file").set_input_files(str(bad))
    error = phone.get_by_test_id("predict-error")
    expect(error).to_be_visible()
    text = error.inner_text()
    print(f"error shown: {text!r}")
    assert not CODE_PREFIX.search(text), text
    assert "not_an_image" not in text and "bad_input" not in text
    assert re.match(r"^[A-Z]", text) or text.startswith("notes.jpg"), text
    assert text.rstrip().endswith((".", ")", "!")), text
    assert text.count("notes.jpg") <= 1, text
    within_screen(phone, "predict-error")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    phone.screenshot(path=str(tmp_path / "phone-error.png"), full_page=False)


def test_a_url_error_names_the_url_once(phone: Page, model_id: str, tmp_path: Path) -> None:
    """A failed URL, as the service words it per image (``URL: cannot fetch URL: cause``) and as a whole-request
    error body: the page names the URL once and shows no code."""
    url = "http://images.invalid/summer/blouse-0001.jpg"
    per_image = {"model_id": model_id, "predictions": [{"image": url, "error": {
        "code": "fetch_failed", "message": f"{url}: cannot fetch {url}: HTTP 404 Not Found"}}]}
    whole = {"error": {"code": "url_blocked",
                       "message": f"{url}: cannot fetch {url}: the host resolves to a private address"}}
    answers = [(200, per_image), (422, whole)]

    def fake_predict(route: Route) -> None:
        status, body = answers.pop(0)
        route.fulfill(status=status, content_type="application/json", body=json.dumps(body))

    phone.route(re.compile(r".*/v1/models/[^/]+/predict$"), fake_predict)
    open_with_model(phone, model_id)
    image = tmp_path / "a.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    error = phone.get_by_test_id("predict-error")
    for expected in ("HTTP 404 Not Found", "private address"):
        phone.get_by_test_id("predict-file").set_input_files(str(image))
        expect(error).to_contain_text(expected)
        text = error.inner_text()
        print(f"error shown: {text!r}")
        assert text.count(url) == 1, text
        assert not CODE_PREFIX.search(text), text
        assert re.match(r"^[A-Z]", text), text
        within_screen(phone, "predict-error")
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # several images: one card each, headed by the image; its error does not name the URL again
    answers.append((200, {"model_id": model_id, "predictions": [
        per_image["predictions"][0], {"image": "b.png", "error": {"code": "not_an_image",
                                                                  "message": "b.png: not an image"}}]}))
    second = tmp_path / "b.png"
    second.write_bytes(image.read_bytes())
    phone.get_by_test_id("predict-file").set_input_files([str(image), str(second)])
    cards = phone.get_by_test_id("predict-card")
    expect(cards).to_have_count(2)
    expect(cards.nth(0).locator("h3")).to_have_text(url)
    for i, name in ((0, url), (1, "b.png")):
        card = cards.nth(i)
        shown = card.get_by_test_id("predict-card-error").inner_text()
        print(f"card error shown: {shown!r}")
        assert card.inner_text().count(name) == 1, card.inner_text()
        assert not CODE_PREFIX.search(shown) and re.match(r"^[A-Z]", shown), shown
    expect(cards.nth(1).get_by_test_id("predict-card-error")).to_have_text("Not an image.")
    within_screen(phone, "predict-cards")
    assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert answers == []
