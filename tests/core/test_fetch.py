"""photolabel.fetch against a real HTTP server on 127.0.0.1 started by the tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import pytest
from support import closed_port, serve_http

from photolabel import fetch
from photolabel.errors import FetchError
from photolabel.fetch import FetchOptions, fetch_many, fetch_url

BODY = b"hello photolabel " * 100


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        if path == "/ok":
            self._send(200, BODY)
        elif path == "/missing":
            self._send(404, b"nope")
        elif path == "/broken":
            self._send(500, b"oops")
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, BODY)
            else:
                self._send(302, headers={"Location": f"/hops/{left - 1}"})
        elif path == "/to-ftp":
            self._send(302, headers={"Location": "ftp://127.0.0.1/x"})
        elif path == "/to-other-loopback":
            port = self.server.server_address[1]
            self._send(302, headers={"Location": f"http://127.0.0.2:{port}/ok"})
        elif path == "/big-declared":
            # announces 10 MB; the client must refuse before reading it
            self._send(200, b"x" * 10, headers={"Content-Length": str(10 * 1024**2)})
        elif path == "/big-undeclared":
            # no Content-Length: HTTP/1.0 close-delimited body, longer than the cap
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"y" * 5000)
        elif path == "/together":
            try:
                self.barrier.wait()  # type: ignore[attr-defined]
            except threading.BrokenBarrierError:
                self._send(503, b"not concurrent")
                return
            self._send(200, BODY)
        elif path == "/slow":
            time.sleep(0.8)
            self._send(200, BODY)
        elif path == "/drip":
            # each piece arrives within the socket timeout; the whole body does not
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif path == "/drip-status":
            # the status line itself, one byte every 0.05 s (5 s in all)
            self._drip(b"HTTP/1.0 200 OK\r\n" + b"X-Pad: " + b"p" * 80 + b"\r\n\r\n", then=BODY)
        elif path == "/drip-headers":
            # a prompt status line, then headers one byte every 0.05 s: each byte well within any
            # socket timeout, the whole head 5 s
            self.wfile.write(b"HTTP/1.0 200 OK\r\n")
            self._drip(b"X-Slow: " + b"s" * 90 + b"\r\n\r\n", then=BODY)
        elif path.startswith("/slow-hops/"):
            # every hop answers within 0.25 s; five of them take longer than the deadline
            time.sleep(0.25)
            left = int(path.rsplit("/", 1)[1])
            if left == 0:
                self._send(200, BODY)
            else:
                self._send(302, headers={"Location": f"/slow-hops/{left - 1}"})
        elif path == "/short-body":
            # announces 100 bytes, sends 10 and closes
            self._send(200, b"0123456789", headers={"Content-Length": "100", "Connection": "close"})
        else:
            self._send(404)

    def _drip(self, data: bytes, every: float = 0.05, then: bytes = b"") -> None:
        """``data`` one byte every ``every`` s, then ``then`` at once."""
        try:
            for index in range(len(data)):
                self.wfile.write(data[index:index + 1])
                time.sleep(every)
            self.wfile.write(then)
        except OSError:  # the client gave up before the whole response was sent
            cuts = getattr(self, "cuts", None)
            if cuts is not None:
                cuts.release()


@pytest.fixture
def server() -> Iterator[str]:
    with serve_http(_Handler) as base:
        yield base


@pytest.fixture(name="closed_port")
def closed_port_fixture() -> int:
    return closed_port()


def test_fetch_url_returns_the_body(server: str) -> None:
    assert fetch_url(f"{server}/ok") == BODY


@pytest.mark.parametrize(("path", "status"), [("/missing", "HTTP 404"), ("/broken", "HTTP 500")])
def test_http_error_names_url_and_status(server: str, path: str, status: str) -> None:
    with pytest.raises(FetchError) as caught:
        fetch_url(f"{server}{path}")
    message = str(caught.value)
    assert f"{server}{path}" in message
    assert status in message
    assert "\n" not in message


def test_connection_refused(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/x.jpg"
    with pytest.raises(FetchError, match="connection refused") as caught:
        fetch_url(url)
    assert url in str(caught.value)
    assert isinstance(caught.value, OSError)


def test_unknown_host(monkeypatch: pytest.MonkeyPatch) -> None:
    # no real DNS look-up: the resolver answers "no such name" at once
    def no_such_name(*args: object, **kwargs: object) -> list[object]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_such_name)
    with pytest.raises(FetchError, match=r"no-such-host.invalid/x.jpg: host not found \(Name or service"):
        fetch_url("http://no-such-host.invalid/x.jpg", FetchOptions(timeout=5))
    with pytest.raises(FetchError, match="host not found"):
        fetch_url("http://no-such-host.invalid/x.jpg", FetchOptions(allow_private=False))


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "file:///etc/hostname", "/etc/hostname", "http://"])
def test_only_http_and_https(url: str) -> None:
    with pytest.raises(FetchError) as caught:
        fetch_url(url)
    assert url in str(caught.value)


def test_size_cap_from_content_length(server: str) -> None:
    with pytest.raises(FetchError, match="over the cap of 1000 bytes") as caught:
        fetch_url(f"{server}/big-declared", FetchOptions(max_bytes=1000))
    assert "/big-declared" in str(caught.value)


def test_size_cap_while_reading(server: str) -> None:
    with pytest.raises(FetchError, match="over the cap of 1000 bytes"):
        fetch_url(f"{server}/big-undeclared", FetchOptions(max_bytes=1000))
    assert fetch_url(f"{server}/big-undeclared", FetchOptions(max_bytes=5000)) == b"y" * 5000


def test_redirects_followed_up_to_the_cap(server: str) -> None:
    assert fetch_url(f"{server}/hops/3", FetchOptions(max_redirects=3)) == BODY
    with pytest.raises(FetchError, match=r"too many redirects \(more than 2\)") as caught:
        fetch_url(f"{server}/hops/3", FetchOptions(max_redirects=2))
    assert f"{server}/hops/3" in str(caught.value)
    with pytest.raises(FetchError, match="too many redirects"):
        fetch_url(f"{server}/hops/1", FetchOptions(max_redirects=0))


def test_redirect_to_another_scheme_is_refused(server: str) -> None:
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        fetch_url(f"{server}/to-ftp")


def test_timeout(server: str) -> None:
    # the response would come after 0.8 s
    with pytest.raises(FetchError, match="timed out after 0.3 s"):
        fetch_url(f"{server}/slow", FetchOptions(timeout=0.3))


def test_timeout_bounds_the_whole_body(server: str) -> None:
    # 100 bytes, one every 0.05 s: no single read waits 0.3 s, the whole body takes 5 s
    with pytest.raises(FetchError, match="timed out after 0.3 s"):
        fetch_url(f"{server}/drip", FetchOptions(timeout=0.3))


@pytest.mark.parametrize("path", ["/drip-headers", "/drip-status"])
def test_timeout_bounds_the_status_line_and_headers(server: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cuts = threading.Semaphore(0)
    monkeypatch.setattr(_Handler, "cuts", cuts, raising=False)
    with pytest.raises(FetchError, match=r"timed out after 0.5 s \(HTTP_TIMEOUT") as caught:
        fetch_url(f"{server}{path}", FetchOptions(timeout=0.5))
    assert f"{server}{path}" in str(caught.value)
    assert "\n" not in str(caught.value)
    # the client hung up in the middle of the head (it took 5 s to drip), it did not wait for it
    assert cuts.acquire(timeout=10), "the server sent the whole response: the fetch waited for it"


def test_timeout_bounds_every_redirect_hop_together(server: str) -> None:
    assert fetch_url(f"{server}/slow-hops/1", FetchOptions(timeout=5)) == BODY
    with pytest.raises(FetchError, match="timed out after 0.6 s") as caught:
        fetch_url(f"{server}/slow-hops/5", FetchOptions(timeout=0.6))
    assert "/slow-hops/5" in str(caught.value)


def test_timeout_bounds_the_head_without_private_addresses_too(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # the public-only connection (allow_private=False) keeps the deadline as well
    monkeypatch.setattr(fetch, "_is_public", lambda address: str(address) == "127.0.0.1")
    with pytest.raises(FetchError, match="timed out after 0.5 s"):
        fetch_url(f"{server}/drip-headers", FetchOptions(timeout=0.5, allow_private=False))


def test_a_body_cut_short_is_an_error_not_a_short_body(server: str) -> None:
    with pytest.raises(FetchError, match="closed before the whole response arrived") as caught:
        fetch_url(f"{server}/short-body")
    assert "/short-body" in str(caught.value)


def test_many_dripping_fetches_all_end_at_the_deadline(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # 8 at once: the watchdog ends each of them, none is left waiting for its server
    cuts = threading.Semaphore(0)
    monkeypatch.setattr(_Handler, "cuts", cuts, raising=False)
    results = fetch_many([f"{server}/drip-headers"] * 8, FetchOptions(timeout=0.5, pool_size=8))
    assert all(isinstance(result, FetchError) and "timed out after 0.5 s" in str(result) for result in results)
    assert all(cuts.acquire(timeout=10) for _ in range(8))
    assert fetch_url(f"{server}/ok", FetchOptions(timeout=5)) == BODY


def test_private_addresses_refused_when_not_allowed(server: str) -> None:
    options = FetchOptions(allow_private=False)
    with pytest.raises(
        FetchError, match="private address refused: host 127.0.0.1 resolves to 127.0.0.1"
    ) as caught:
        fetch_url(f"{server}/ok", options)
    assert f"{server}/ok" in str(caught.value)
    port = server.rsplit(":", 1)[1]
    with pytest.raises(FetchError, match="private address refused: host localhost resolves to"):
        fetch_url(f"http://localhost:{port}/ok", options)
    # allowed by default
    assert fetch_url(f"{server}/ok") == BODY


def test_private_address_refused_on_a_redirect_hop(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend 127.0.0.1 is public so that the first hop connects; the hop to 127.0.0.2 must not.
    monkeypatch.setattr(fetch, "_is_public", lambda address: str(address) == "127.0.0.1")
    options = FetchOptions(allow_private=False)
    assert fetch_url(f"{server}/ok", options) == BODY
    with pytest.raises(FetchError, match="private address refused: host 127.0.0.2") as caught:
        fetch_url(f"{server}/to-other-loopback", options)
    assert "/to-other-loopback" in str(caught.value)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("127.0.0.1", False),
        ("10.1.2.3", False),
        ("192.168.0.1", False),
        ("172.16.5.5", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("240.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_public(address: str, public: bool) -> None:
    import ipaddress

    assert fetch._is_public(ipaddress.ip_address(address)) is public


def test_fetch_many_keeps_order_and_returns_errors(server: str, closed_port: int) -> None:
    urls = [
        f"{server}/ok",
        f"{server}/missing",
        f"http://127.0.0.1:{closed_port}/x",
        f"{server}/hops/1",
        f"{server}/big-undeclared",
    ]
    results = fetch_many(urls, FetchOptions(pool_size=3, max_bytes=2000), progress=True)
    assert len(results) == len(urls)
    assert results[0] == BODY
    assert isinstance(results[1], FetchError) and "HTTP 404" in str(results[1])
    assert isinstance(results[2], FetchError) and "connection refused" in str(results[2])
    assert results[3] == BODY
    assert isinstance(results[4], FetchError) and "over the cap" in str(results[4])
    for url, result in zip(urls, results):
        if isinstance(result, FetchError):
            assert url in str(result)


def test_fetch_many_runs_concurrently(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each /together request waits until four are in flight at once: done one by one, they time out.
    monkeypatch.setattr(_Handler, "barrier", threading.Barrier(4, timeout=3), raising=False)
    results = fetch_many([f"{server}/together"] * 4, FetchOptions(pool_size=4, timeout=5))
    assert results == [BODY] * 4


def test_fetch_many_of_nothing() -> None:
    assert fetch_many([], FetchOptions()) == []


@pytest.mark.parametrize(
    "kwargs", [{"timeout": 0}, {"max_bytes": -1}, {"max_redirects": -1}, {"pool_size": 0}]
)
def test_options_are_checked(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FetchOptions(**kwargs)  # type: ignore[arg-type]
