"""The web page's model actions in real headless Chromium against a real uvicorn server: download the selected
model (the same bytes as ``GET /v1/models/{id}/archive``), delete it (after a confirmation), and predict several
images at once (selected or dropped), one result card per image."""

from __future__ import annotations

import base64
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from browser import chromium, require_browser, service

require_browser()
from playwright.sync_api import Browser, Page, expect  # noqa: E402

UI_TIMEOUT_MS = 15_000
LABELS = ("blouse", "halter", "sweater")


def model_archive(model_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(model_dir, arcname="model")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    with service(tmp_path_factory.mktemp("page_models"), cache_dir) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.fixture
def model_id(api: httpx.Client, trained_model: Path) -> str:
    """The session's CLI-trained model, imported through POST /v1/models (again after a test deleted it)."""
    response = api.post("/v1/models", files={"archive": ("model.tar.gz", model_archive(trained_model))})
    assert response.status_code in (200, 201), response.text
    return response.json()["model_id"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser, server: str, model_id: str) -> Iterator[Page]:
    context = browser.new_context(base_url=server, viewport={"width": 1200, "height": 900}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        page.goto("/")
        expect(page.get_by_test_id("model-select").locator(f'option[value="{model_id}"]')).to_have_count(1)
        page.get_by_test_id("model-select").select_option(model_id)
        expect(page.get_by_test_id("model-id")).to_have_text(model_id)
        yield page
    finally:
        context.close()
    assert errors == [], errors


def images(small_data: Path) -> list[Path]:
    return [min((small_data / label).glob("*.jpg")) for label in LABELS]


def expected_labels(api: httpx.Client, model_id: str, files: list[Path]) -> list[str]:
    answer = api.post(f"/v1/models/{model_id}/predict",
                      files=[("images", (f.name, f.read_bytes(), "image/jpeg")) for f in files])
    assert answer.status_code == 200, answer.text
    return [p["label"] for p in answer.json()["predictions"]]


def expect_cards(page: Page, files: list[Path], labels: list[str]) -> None:
    cards = page.get_by_test_id("predict-cards").get_by_test_id("predict-card")
    expect(cards).to_have_count(len(files))
    for i, (file, label) in enumerate(zip(files, labels, strict=True)):
        expect(cards.nth(i).locator("h3")).to_have_text(file.name)
        expect(cards.nth(i).get_by_test_id("predict-card-label")).to_have_text(label)
    expect(page.get_by_test_id("predict-error")).to_be_hidden()
    expect(page.get_by_test_id("predict-label")).to_be_hidden()  # the one-image view is not shown


def test_several_selected_images_get_one_card_each(page: Page, api: httpx.Client, model_id: str,
                                                   small_data: Path, tmp_path: Path) -> None:
    files = images(small_data)
    page.get_by_test_id("predict-file").set_input_files([str(f) for f in files])
    expect_cards(page, files, expected_labels(api, model_id, files))
    page.screenshot(path=str(tmp_path / "cards.png"), full_page=True)

    # one image again: the one-image view, and the cards are gone
    page.get_by_test_id("predict-file").set_input_files(str(files[1]))
    expect(page.get_by_test_id("predict-label")).to_have_text(expected_labels(api, model_id, files[1:2])[0])
    expect(page.get_by_test_id("predict-cards")).to_be_hidden()


def test_several_dropped_images_get_one_card_each(page: Page, api: httpx.Client, model_id: str,
                                                  small_data: Path) -> None:
    files = [*images(small_data), min((small_data / "sweater").glob("*.jpg"))]
    page.evaluate("""(items) => {
        const dt = new DataTransfer();
        for (const [name, b64] of items) {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, { type: "image/jpeg" }));
        }
        document.getElementById("drop-zone").dispatchEvent(
            new DragEvent("drop", { dataTransfer: dt, bubbles: true, cancelable: true }));
    }""", [[f.name, base64.b64encode(f.read_bytes()).decode()] for f in files])
    expect_cards(page, files, expected_labels(api, model_id, files))


def test_download_gives_the_model_archive(page: Page, api: httpx.Client, model_id: str) -> None:
    link = page.get_by_test_id("model-download")
    expect(link).to_be_visible()
    expect(link).to_have_attribute("href", f"/v1/models/{model_id}/archive")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == f"photolabel-model-{model_id[:12]}.tar.gz"
    assert Path(download.path()).read_bytes() == api.get(f"/v1/models/{model_id}/archive").content


def test_delete_asks_first_then_removes_the_model(page: Page, api: httpx.Client, model_id: str) -> None:
    asked: list[str] = []

    def dismiss(dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.get_by_test_id("model-delete").click()
    expect(page.get_by_test_id("model-id")).to_have_text(model_id)
    assert len(asked) == 1 and model_id[:12] in asked[0] and "cannot be undone" in asked[0]
    assert api.get(f"/v1/models/{model_id}").status_code == 200  # dismissed: nothing deleted

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_test_id("model-delete").click()
    expect(page.get_by_test_id("model-empty")).to_be_visible()
    expect(page.get_by_test_id("model-select").locator(f'option[value="{model_id}"]')).to_have_count(0)
    assert api.get(f"/v1/models/{model_id}").status_code == 404
