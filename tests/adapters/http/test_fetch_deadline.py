"""URL downloads in the service: one deadline (HTTP_TIMEOUT) per download, and slow downloads that cannot
take the threads other requests need (FETCH_REQUEST_SLOTS).

A drip server on 127.0.0.1 (ALLOW_PRIVATE_URLS on) sends its headers one byte at a time, for as long as
the test lets it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
import pytest
from support import QuietHandler, running_uvicorn, serve_http
from test_api import assert_error, image_files, make_settings, register_model, running

from photolabel.adapters.http.app import create_app
from photolabel.adapters.http.middleware import FetchSlots, may_fetch

HANG_S = 30.0  # far beyond what any step takes: only a server that stopped answering reaches it


class DripServer:
    """``GET /drip``: a status line, then one header byte every 0.2 s until ``release`` (then a tiny body)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                with server.lock:
                    server.active += 1
                    server.max_active = max(server.max_active, server.active)
                try:
                    self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                    while not server.release.wait(0.2):
                        self.wfile.write(b"X")  # the name of a header that never ends
                    self.wfile.write(b"-Slow: yes\r\nContent-Length: 4\r\n\r\nnope")
                except OSError:  # the client gave up
                    pass
                finally:
                    with server.lock:
                        server.active -= 1

        self.handler = Handler

    @contextmanager
    def serving(self) -> Iterator[str]:
        try:
            with serve_http(self.handler) as base:
                yield f"{base}/drip"
        finally:
            self.release.set()


def test_a_download_that_drips_its_headers_ends_at_http_timeout(tmp_path: Path, cache_dir: Path,
                                                                trained_model: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True, http_timeout=1)
    model_id = register_model(settings.data_dir, trained_model)
    drip = DripServer()
    with drip.serving() as url, running(settings) as client:
        message = assert_error(client.post(f"/v1/models/{model_id}/predict", json={"urls": [url]}),
                               422, "fetch_failed")
        assert url in message and "timed out after 1 s (HTTP_TIMEOUT" in message
        message = assert_error(client.post("/infer", json={"model": {"sha1": model_id[:40]}, "image": {"url": url}}),
                               422, "fetch_failed")
        assert "timed out after 1 s (HTTP_TIMEOUT" in message


def test_slow_downloads_do_not_starve_other_requests(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                     small_data: Path) -> None:
    # 50 predictions by URL against a server that never finishes its headers (HTTP_TIMEOUT is long):
    # more than the 40 threads the server has. Predicting an uploaded image must still answer.
    slots = 4
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True, http_timeout=120,
                             fetch_request_slots=slots)
    model_id = register_model(settings.data_dir, trained_model)
    image = image_files(small_data, "halter")[0].read_bytes()
    drip = DripServer()
    with drip.serving() as url, running_uvicorn(create_app(settings)) as base, \
            ThreadPoolExecutor(max_workers=50) as pool:
        with httpx.Client(base_url=base, timeout=HANG_S * 4) as slow:
            waiting = [pool.submit(slow.post, f"/v1/models/{model_id}/predict", json={"urls": [url]})
                       for _ in range(50)]
            deadline = time.monotonic() + HANG_S
            while drip.active < slots:
                assert time.monotonic() < deadline, f"only {drip.active} downloads started"
                time.sleep(0.05)
            with httpx.Client(base_url=base, timeout=HANG_S) as client:
                predicted = client.post(f"/v1/models/{model_id}/predict", content=image,
                                        headers={"Content-Type": "image/jpeg"})
                assert predicted.status_code == 200, predicted.text
                assert predicted.json()["predictions"][0]["label"] == "halter"
                assert client.get("/v1/jobs").status_code == 200  # a route that runs in the thread pool
                assert client.get(f"/v1/models/{model_id}").status_code == 200
            assert drip.max_active == slots  # no more downloads than slots at any time
            drip.release.set()
            answers = [future.result(timeout=HANG_S * 4) for future in waiting]
        # each got its own answer: an error about its image (the server sent no image), never a 5xx
        assert all(answer.status_code < 500 for answer in answers), {a.status_code for a in answers}


def test_fetch_slots_refuse_after_waiting_and_let_other_requests_by() -> None:
    async def scenario() -> None:
        release = anyio.Event()

        async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            if scope["path"] == "/train":
                await release.wait()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})

        middleware = FetchSlots(app, slots=1, wait_s=0.3)
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            results: dict[str, httpx.Response] = {}

            async def first() -> None:
                results["first"] = await client.post("/train", json={})

            async with anyio.create_task_group() as group:
                group.start_soon(first)
                await anyio.sleep(0.05)  # let the first take the slot
                second = await client.post("/train", json={})
                assert second.status_code == 503
                assert second.headers["retry-after"] == "1"
                body = second.json()["error"]
                assert body["code"] == "busy" and "FETCH_REQUEST_SLOTS" in body["message"]
                # requests that download nothing never wait for a slot
                assert (await client.get("/v1/models")).status_code == 200
                assert (await client.post("/v1/models/abc/predict", content=b"x",
                                          headers={"Content-Type": "image/jpeg"})).status_code == 200
                release.set()
            assert results["first"].status_code == 200
            assert (await client.post("/train", json={})).status_code == 200  # the slot came back

    async def bounded() -> None:
        with anyio.fail_after(HANG_S):
            await scenario()

    anyio.run(bounded)


@pytest.mark.parametrize(("method", "path", "content_type", "fetches"), [
    ("POST", "/train", "application/json", True),
    ("POST", "/infer", "application/json", True),
    ("POST", "/v1/models/abc/predict", "application/json", True),
    ("POST", "/v1/models/abc/predict", "application/merge-patch+json; charset=utf-8", True),
    ("POST", "/v1/models/abc/predict", "multipart/form-data; boundary=x", False),
    ("POST", "/v1/models/abc/predict", "image/jpeg", False),
    ("POST", "/v1/models/abc/predict-object", "application/json", True),
    ("POST", "/v1/train", "multipart/form-data; boundary=x", False),
    ("GET", "/v1/models", "", False),
])
def test_which_requests_take_a_download_slot(method: str, path: str, content_type: str, fetches: bool) -> None:
    scope = {"type": "http", "method": method, "path": path,
             "headers": [(b"content-type", content_type.encode())] if content_type else []}
    assert may_fetch(scope) is fetches
