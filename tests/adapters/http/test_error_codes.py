"""Stable error codes: each class of refusal answers its own code, driven through the real app; multipart
bodies that cannot be parsed are ``bad_multipart``, never ``bad_json``; and docs/ERRORS.md lists every code."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from support import closed_port
from test_api import FileServer, assert_alive, assert_error, image_files, make_settings, register_model, running

import photolabel.adapters.http.app  # noqa: F401  (defines every error class the service answers)
from photolabel.adapters.http.errors import status_by_code

ERRORS_DOC = Path(__file__).parents[3] / "docs" / "ERRORS.md"
CSV_LIMIT = 4096


@pytest.fixture(scope="module")
def jpeg(small_data: Path) -> bytes:
    return image_files(small_data, "blouse")[0].read_bytes()


@pytest.fixture(scope="module")
def ppm() -> bytes:
    """A real image in a format Pillow reads and photolabel does not accept."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PPM")
    return buffer.getvalue()


def _raw(client: TestClient, model_id: str, body: bytes, content_type: str = "image/jpeg") -> httpx.Response:
    return client.post(f"/v1/models/{model_id}/predict", content=body, headers={"Content-Type": content_type})


def _multipart(client: TestClient, path: str, body: bytes, boundary: str | None = "zz") -> httpx.Response:
    content_type = "multipart/form-data" + (f"; boundary={boundary}" if boundary else "")
    return client.post(path, content=body, headers={"Content-Type": content_type})


def _seed_train(url: str, sha1: str = "1" * 40) -> dict[str, Any]:
    return {"csv": {"url": url, "sha1": sha1}, "model": {"uri": ""}, "metadata": {"random_seed": 1}}


Call = Callable[[TestClient, str, dict[str, Any]], httpx.Response]

#: (refusal, request, status, code) with the service's default settings (private addresses refused)
DEFAULT_REFUSALS: list[tuple[str, Call, int, str]] = [
    ("json body cut short", lambda c, m, x: c.post("/infer", content=b'{"model": ',
                                                  headers={"Content-Type": "application/json"}), 400, "bad_json"),
    ("multipart without boundary", lambda c, m, x: _multipart(c, "/v1/train", b"xx", boundary=None),
     400, "bad_multipart"),
    ("multipart that is garbage", lambda c, m, x: _multipart(c, "/v1/train", b"garbage"), 400, "bad_multipart"),
    ("multipart with a broken header", lambda c, m, x: _multipart(
        c, f"/v1/models/{m}/predict", b"--zz\r\nbroken-header\r\n\r\nx\r\n--zz--\r\n"), 400, "bad_multipart"),
    ("missing form field", lambda c, m, x: c.post("/v1/train", data={"seed": "1"}), 422, "invalid_request"),
    ("head_params not JSON", lambda c, m, x: c.post("/v1/train", files={"data": ("d.tar.gz", b"x")},
                                                   data={"head_params": "{"}), 422, "invalid_config"),
    ("unknown head", lambda c, m, x: c.post("/v1/train", files={"data": ("d.tar.gz", b"x")},
                                           data={"head": "xgboost"}), 422, "unknown_name"),
    ("upload of another kind", lambda c, m, x: c.post("/v1/train", files={"data": ("d.exe", b"MZ")}),
     422, "bad_upload"),
    ("unknown model", lambda c, m, x: _raw(c, "0" * 64, x["jpeg"]), 404, "not_found"),
    ("unknown route", lambda c, m, x: c.get("/v1/nothing-here"), 404, "not_found"),
    ("wrong method", lambda c, m, x: c.delete("/v1/jobs"), 405, "method_not_allowed"),
    ("private address", lambda c, m, x: c.post(f"/v1/models/{m}/predict",
                                               json={"urls": [f"http://127.0.0.1:{closed_port()}/a.jpg"]}),
     422, "url_blocked"),
    ("private csv address", lambda c, m, x: c.post("/train", json=_seed_train(
        f"http://127.0.0.1:{closed_port()}/t.csv")), 422, "url_blocked"),
    ("another url scheme", lambda c, m, x: c.post("/infer", json={"model": {"uri": "", "sha1": m},
                                                                  "image": {"url": "ftp://example.com/a.jpg"}}),
     422, "unsupported_scheme"),
    ("not an image", lambda c, m, x: _raw(c, m, b"name,label\na.jpg,cat\n"), 415, "not_an_image"),
    ("unsupported image format", lambda c, m, x: _raw(c, m, x["ppm"]), 415, "unsupported_format"),
    ("truncated image", lambda c, m, x: _raw(c, m, x["jpeg"][: len(x["jpeg"]) // 2]), 422, "bad_image"),
    ("body of another type", lambda c, m, x: _raw(c, m, b"hello", "text/plain"), 415, "unsupported_media_type"),
    ("local uri", lambda c, m, x: c.post(f"/v1/models/{m}/predict-object", json={"uri": "/etc/hostname"}),
     422, "bad_uri"),
    ("object linked out of its bucket", lambda c, m, x: c.post(f"/v1/models/{m}/predict-object",
                                                               json={"bucket": "b", "filename": "out.jpg"}),
     422, "bad_path"),
]


@pytest.fixture(scope="module")
def default_client(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path,
                   trained_model: Path) -> Iterator[tuple[TestClient, str]]:
    tmp_path = tmp_path_factory.mktemp("codes")
    model_id = register_model(tmp_path / "data", trained_model)
    (tmp_path / "outside.jpg").write_bytes(b"not in the bucket")
    (tmp_path / "data" / "storage" / "b").mkdir(parents=True)
    (tmp_path / "data" / "storage" / "b" / "out.jpg").symlink_to(tmp_path / "outside.jpg")
    with running(make_settings(tmp_path, cache_dir)) as client:
        yield client, model_id


@pytest.mark.parametrize(("refusal", "call", "status", "code"), DEFAULT_REFUSALS,
                         ids=[refusal for refusal, *_ in DEFAULT_REFUSALS])
def test_each_refusal_has_its_own_code(default_client: tuple[TestClient, str], jpeg: bytes, ppm: bytes,
                                       refusal: str, call: Call, status: int, code: str) -> None:
    client, model_id = default_client
    assert_error(call(client, model_id, {"jpeg": jpeg, "ppm": ppm}), status, code)
    assert_alive(client)


def test_refusals_of_fetched_data_have_their_own_codes(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                       small_data: Path, jpeg: bytes) -> None:
    model_id = register_model(tmp_path / "data", trained_model)
    big_csv = b"image,label\n" + b"https://example.com/a.jpg,cat\n" * (CSV_LIMIT // 20)
    small_csv = b"https://example.com/a.jpg,cat\nhttps://example.com/b.jpg,dog\n"
    server = FileServer({"/big.jpg": jpeg + b"\0" * CSV_LIMIT, "/big.csv": big_csv, "/small.csv": small_csv})
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True, max_upload_bytes=len(jpeg) + 1024,
                             max_image_pixels=1000)
    with server.serving() as base, running(settings) as client:
        assert_error(_raw(client, model_id, jpeg + b"\0" * 2048), 413, "body_too_large")
        assert_error(_raw(client, model_id, jpeg), 413, "image_too_large")
        assert_error(client.post(f"/v1/models/{model_id}/predict", json={"urls": [f"{base}/big.jpg"]}),
                     413, "download_too_large")
        assert_error(client.post("/train", json=_seed_train(f"{base}/big.csv")), 413, "csv_too_large")
        assert_error(client.post("/train", json=_seed_train(f"{base}/small.csv")), 400, "sha1_mismatch")
        assert_error(client.post(f"/v1/models/{model_id}/predict",
                                 json={"urls": [f"http://127.0.0.1:{closed_port()}/a.jpg"]}), 422, "fetch_failed")
        assert_alive(client)


# --- the table ------------------------------------------------------------------------------------------

#: codes that are not error classes: job outcomes recorded by the job runner, and the HTTP layer's own
OTHER_CODES = {"method_not_allowed", "internal", "process_died", "interrupted", "model_deleted"}


def _documented() -> dict[str, int]:
    rows = re.findall(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*(\d{3}|—|-)\s*\|", ERRORS_DOC.read_text(),
                      flags=re.MULTILINE)
    return {code: int(status) if status.isdigit() else 0 for code, status in rows}


def test_every_code_is_documented_with_its_status() -> None:
    documented = _documented()
    answered = status_by_code()
    missing = sorted((set(answered) | OTHER_CODES) - set(documented))
    assert not missing, f"docs/ERRORS.md does not list {missing}"
    wrong = {code: (documented[code], status) for code, status in answered.items()
             if code != "error" and documented[code] not in (status, 0)}
    assert not wrong, f"docs/ERRORS.md gives other statuses (documented, answered): {wrong}"


def test_no_two_kinds_of_refusal_share_a_code() -> None:
    from photolabel.adapters.http.errors import _error_classes

    by_code: dict[str, list[str]] = {}
    for cls in _error_classes():
        if "code" in vars(cls):
            by_code.setdefault(cls.code, []).append(cls.__name__)
    # one refusal raised from two layers: a missing file or route, and a full disk (core and HTTP)
    allowed = {"not_found": {"SourceNotFoundError", "NotFoundError"},
               "insufficient_storage": {"InsufficientStorageError", "InsufficientStorageApiError"},
               "bad_request": {"ApiError", "BadBodyError"}}
    shared = {code: names for code, names in by_code.items() if len(names) > 1 and set(names) != allowed.get(code)}
    assert not shared, f"codes shared by several error classes: {shared}"



def test_messages_name_the_servers_folders_by_their_setting() -> None:
    from photolabel.adapters.http.errors import hide_paths

    roots = [("/srv/photolabel/data", "DATA_DIR"), ("/srv/photolabel/data/storage", "STORAGE_ROOT")]
    message = ("/srv/photolabel/data/models/x/head/coef.npy: bad; '/srv/photolabel/data/storage/b/a.jpg'; "
               "/srv/photolabel/database stays; http://example.com/srv/photolabel/data/a.jpg stays")
    assert hide_paths(message, roots) == ("DATA_DIR/models/x/head/coef.npy: bad; 'STORAGE_ROOT/b/a.jpg'; "
                                          "/srv/photolabel/database stays; "
                                          "http://example.com/srv/photolabel/data/a.jpg stays")
