"""The web page at ``/``, driven in real headless Chromium against a real uvicorn server.

One server per module (DATA_DIR in a temporary folder, the session's cache), seeded with
one model trained through the API. Each test records every request the page makes (all
must go to 127.0.0.1) and every console error (there must be none), and saves
screenshots under its ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import io
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
from playwright.sync_api import Browser, Page, expect  # noqa: E402

LABELS = ("blouse", "halter", "sweater")
STATIC = Path(__file__).parents[3] / "src" / "photolabel" / "adapters" / "http" / "static"
JOB_TIMEOUT_S = 60.0
UI_TIMEOUT_MS = 15_000


def tar_gz(folder: Path, labels: tuple[str, ...], per_label: int) -> bytes:
    """``<label>/<file>`` entries: the first ``per_label`` images of each label in ``folder``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for label in labels:
            for image in sorted((folder / label).glob("*.jpg"))[:per_label]:
                tar.add(image, arcname=f"{label}/{image.name}")
    return buffer.getvalue()


def wait_for_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("ready", "error"):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not done after {JOB_TIMEOUT_S} s: {job}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a background thread; its base URL."""
    with service(tmp_path_factory.mktemp("web_data"), cache_dir) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def seeded_model(api: httpx.Client, small_data: Path) -> str:
    """The model_id of a model trained through POST /v1/train on all of ``small_data``."""
    response = api.post("/v1/train", files={"data": ("small.tar.gz", tar_gz(small_data, LABELS, 100),
                                                     "application/gzip")})
    assert response.status_code in (200, 202), response.text
    job = wait_for_job(api, response.json()["job_id"])
    assert job["status"] == "ready", job
    return job["model_id"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


class PageLog:
    """What a page did: every request URL, console errors, uncaught exceptions."""

    def __init__(self, page: Page) -> None:
        self.requests: list[str] = []
        self.console_errors: list[dict[str, str]] = []
        self.page_errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.console_errors.append({"text": message.text, "url": message.location.get("url", "")})

    def foreign_requests(self) -> list[str]:
        return [url for url in self.requests
                if urlparse(url).scheme not in ("data", "blob") and urlparse(url).hostname != "127.0.0.1"]


@pytest.fixture
def page(browser: Browser, server: str, seeded_model: str) -> Iterator[tuple[Page, PageLog]]:
    context = browser.new_context(base_url=server, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    log = PageLog(page)
    try:
        yield page, log
    finally:
        context.close()
    assert log.foreign_requests() == [], f"requests to hosts other than 127.0.0.1: {log.foreign_requests()}"
    assert log.page_errors == [], f"uncaught exceptions in the page: {log.page_errors}"


def shot(page: Page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def open_with_model(page: Page, model_id: str) -> None:
    page.goto("/")
    select = page.get_by_test_id("model-select")
    expect(select.locator(f'option[value="{model_id}"]')).to_have_count(1)
    select.select_option(model_id)
    expect(page.get_by_test_id("model-id")).to_have_text(model_id)


def expect_prediction(page: Page, api: httpx.Client, model_id: str, image: Path) -> None:
    """The page shows label, sorted bars and sha256 for ``image``, the same as the API."""
    page.get_by_test_id("predict-file").set_input_files(str(image))
    label = page.get_by_test_id("predict-label")
    expect(label).to_be_visible()
    expect(page.get_by_test_id("predict-status")).to_have_text(image.name)
    expect(page.get_by_test_id("predict-error")).to_be_hidden()

    response = api.post(f"/v1/models/{model_id}/predict",
                        files={"images": (image.name, image.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    expected = response.json()["predictions"][0]
    assert label.inner_text() in LABELS
    assert label.inner_text() == expected["label"]
    assert page.get_by_test_id("predict-sha256").inner_text() == hashlib.sha256(image.read_bytes()).hexdigest()

    rows = page.get_by_test_id("predict-scores").locator("li")
    expect(rows).to_have_count(len(LABELS))
    shown = [rows.nth(i).get_attribute("data-label") for i in range(len(LABELS))]
    percents = [float(rows.nth(i).locator(".value").inner_text().rstrip("%")) for i in range(len(LABELS))]
    assert shown[0] == expected["label"]
    assert sorted(shown) == sorted(LABELS)
    assert percents == sorted(percents, reverse=True)
    assert sum(percents) == pytest.approx(100, abs=0.5)
    for name, percent in zip(shown, percents):
        assert percent == pytest.approx(100 * expected["scores"][name], abs=0.051)
    expect(page.get_by_test_id("preview")).to_be_visible()


def test_predict_one_image(page: tuple[Page, PageLog], api: httpx.Client, seeded_model: str,
                           small_data: Path, tmp_path: Path) -> None:
    browser_page, log = page
    open_with_model(browser_page, seeded_model)
    shot(browser_page, tmp_path / "0-start.png")
    image = min((small_data / "halter").glob("*.jpg"))
    expect_prediction(browser_page, api, seeded_model, image)
    shot(browser_page, tmp_path / "1-predicted.png")
    assert log.console_errors == []
    assert any(urlparse(url).path == f"/v1/models/{seeded_model}/predict" for url in log.requests)


def test_bad_file_shows_error_then_page_still_works(page: tuple[Page, PageLog], api: httpx.Client,
                                                    seeded_model: str, small_data: Path, tmp_path: Path) -> None:
    browser_page, log = page
    open_with_model(browser_page, seeded_model)
    bad = tmp_path / "notes.jpg"
    bad.write_text("these are notes, not a JPEG\n")
    browser_page.get_by_test_id("predict-file").set_input_files(str(bad))
    error = browser_page.get_by_test_id("predict-error")
    expect(error).to_be_visible()
    expect(error).not_to_be_empty()
    expect(browser_page.get_by_test_id("predict-label")).to_be_hidden()
    expect(browser_page.get_by_test_id("preview")).to_be_hidden()
    shot(browser_page, tmp_path / "2-error.png")
    print(f"error shown: {error.inner_text()!r}")

    image = sorted((small_data / "sweater").glob("*.jpg"))[1]
    expect_prediction(browser_page, api, seeded_model, image)
    shot(browser_page, tmp_path / "3-recovered.png")
    # Chromium logs a failed fetch as "Failed to load resource: ... status of 4xx": expected here, once,
    # for the predict call. Anything else is a real console error.
    print(f"console errors: {log.console_errors}")
    unexpected = [e for e in log.console_errors
                  if not (e["text"].startswith("Failed to load resource: the server responded with a status of 4")
                          and urlparse(e["url"]).path == f"/v1/models/{seeded_model}/predict")]
    assert unexpected == []


def test_train_through_the_form(page: tuple[Page, PageLog], api: httpx.Client, seeded_model: str,
                                small_data: Path, tmp_path: Path) -> None:
    browser_page, log = page
    archive = tmp_path / "two-labels.tar.gz"
    archive.write_bytes(tar_gz(small_data, ("blouse", "sweater"), 10))
    before = {m.get("model_id") for m in api.get("/v1/models").json()["models"]}

    open_with_model(browser_page, seeded_model)
    # Record every status the page shows, however quickly it changes.
    browser_page.evaluate("""() => {
        window.__statuses = [];
        const el = document.querySelector('[data-testid="train-status"]');
        new MutationObserver(() => window.__statuses.push(el.textContent))
            .observe(el, {childList: true, characterData: true, subtree: true});
    }""")
    browser_page.get_by_test_id("train-data").set_input_files(str(archive))
    expect(browser_page.get_by_test_id("train-seed")).to_have_value("1234")
    browser_page.get_by_test_id("train-submit").click()
    expect(browser_page.get_by_test_id("train-progress")).to_be_visible()
    expect(browser_page.get_by_test_id("train-job-id")).not_to_be_empty()
    browser_page.wait_for_function("window.__statuses.some(s => s !== 'queued')", timeout=int(JOB_TIMEOUT_S * 1000))
    shot(browser_page, tmp_path / "4-training.png")

    status = browser_page.get_by_test_id("train-status")
    expect(status).to_have_text("ready", timeout=int(JOB_TIMEOUT_S * 1000))
    expect(browser_page.get_by_test_id("train-error")).to_be_hidden()
    assert browser_page.get_by_test_id("train-progress").get_attribute("value") == "100"
    statuses = browser_page.evaluate("window.__statuses")
    assert statuses[-1] == "ready"
    print(f"statuses shown: {statuses}")

    job_id = browser_page.get_by_test_id("train-job-id").inner_text()
    job = api.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "ready", job
    new_id = job["model_id"]
    assert new_id not in before
    assert any(urlparse(url).path == f"/v1/jobs/{job_id}" for url in log.requests)

    select = browser_page.get_by_test_id("model-select")
    expect(select).to_have_value(new_id)
    expect(select.locator("option")).to_have_count(len(before) + 1)
    expect(browser_page.get_by_test_id("model-id")).to_have_text(new_id)
    expect(browser_page.get_by_test_id("model-labels")).to_have_text("blouse, sweater")
    matrix = browser_page.get_by_test_id("confusion-matrix")
    expect(matrix).to_be_visible()
    expect(matrix.locator("tbody tr")).to_have_count(2)
    expect(matrix.locator("tbody td")).to_have_count(4)
    expect(browser_page.get_by_test_id("per-class").locator("tbody tr")).to_have_count(2)
    shot(browser_page, tmp_path / "5-trained.png")

    # The new model is selectable and predicts with its own two labels; the old one is still there.
    select.select_option(seeded_model)
    expect(browser_page.get_by_test_id("model-labels")).to_have_text(", ".join(LABELS))
    expect(browser_page.get_by_test_id("confusion-matrix").locator("tbody tr")).to_have_count(3)
    shot(browser_page, tmp_path / "6-first-model.png")
    select.select_option(new_id)
    expect(browser_page.get_by_test_id("model-labels")).to_have_text("blouse, sweater")
    assert log.console_errors == []


def test_static_files_are_served(api: httpx.Client) -> None:
    page = api.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    for name in ("app.js", "app.css"):
        response = api.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert (STATIC / name).read_bytes() == response.content
    text = page.text + api.get("/static/app.js").text + api.get("/static/app.css").text
    assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text  # no CDN, no fonts



def test_an_image_unlike_the_training_images_is_shown_as_unknown(page: tuple[Page, PageLog], api: httpx.Client,
                                                                 seeded_model: str, tmp_path: Path) -> None:
    from foreign_images import write_noise_png

    browser_page, log = page
    open_with_model(browser_page, seeded_model)
    expect(browser_page.get_by_test_id("model-calibration")).to_contain_text("temperature")
    expect(browser_page.get_by_test_id("model-unknown")).to_contain_text("of the validation images")
    noise = write_noise_png(tmp_path)
    browser_page.get_by_test_id("predict-file").set_input_files(str(noise))
    label = browser_page.get_by_test_id("predict-label")
    expect(label).to_have_text("unknown")
    expected = api.post(f"/v1/models/{seeded_model}/predict",
                        files={"images": ("noise.png", noise.read_bytes(), "image/png")}).json()["predictions"][0]
    assert expected["unknown"] is True
    note = browser_page.get_by_test_id("predict-unknown")
    expect(note).to_be_visible()
    expect(note).to_contain_text(f"Best guess: {expected['best']}")
    rows = browser_page.get_by_test_id("predict-scores").locator("li")
    expect(rows).to_have_count(len(LABELS))  # the scores are still shown
    assert rows.nth(0).get_attribute("data-label") == expected["best"]
    shot(browser_page, tmp_path / "unknown.png")

    image = min((Path(__file__).parents[3] / "examples" / "fashion-tiny" / "halter").glob("*.jpg"))
    browser_page.get_by_test_id("predict-file").set_input_files(str(image))
    expect(label).to_have_text("halter")
    expect(note).to_be_hidden()
    assert log.console_errors == []
