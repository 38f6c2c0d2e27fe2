"""Helpers shared by tests: a local HTTP server on 127.0.0.1 and a port with nothing on it."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@contextmanager
def serve_http(handler: Any) -> Iterator[str]:
    """Run ``handler`` (a request handler class or factory) on 127.0.0.1; yield the base URL; stop it."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@contextmanager
def running_uvicorn(app: Any, **config: Any) -> Iterator[str]:
    """Serve the ASGI ``app`` with a real uvicorn server on 127.0.0.1 in a background thread; yield its base
    URL; stop it. ``config`` goes to ``uvicorn.Config``."""
    import time

    import uvicorn

    port = closed_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **config))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def wait_until_live(server: Any, base: str, log: Any, wait_s: float = 60.0) -> None:
    """Wait until the ``photolabel serve`` process ``server`` answers ``GET {base}/livez`` with 200; fail with
    its log (a path) if it exits first or does not answer within ``wait_s``."""
    import time
    from pathlib import Path

    import httpx

    deadline = time.monotonic() + wait_s
    while True:
        assert server.poll() is None, Path(log).read_text()
        try:
            if httpx.get(f"{base}/livez", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not start within {wait_s:g} s"
        time.sleep(0.1)
