"""Slow clients against a real uvicorn server with the service's protocol (server.DeadlineProtocol).

Sockets that send a request one byte at a time must be closed at HEADER_TIMEOUT_S (headers) or
BODY_TIMEOUT_S (body), while ordinary requests keep being answered. The deadlines here are 1 s;
the waits are generous and only detect a server that never closes.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from support import running_uvicorn
from test_api import make_settings

from photolabel.adapters.http.app import create_app
from photolabel.adapters.http.server import DeadlineProtocol, deadline_protocol

DEADLINE_S = 1.0
DRIP_EVERY_S = 0.3
HANG_S = 30.0  # far beyond any deadline: only a server that never closes reaches it


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("slow_clients")
    app = create_app(make_settings(tmp, cache_dir))
    with running_uvicorn(app, http=deadline_protocol(DEADLINE_S, DEADLINE_S, 10)) as base:
        yield base


def _connect(base: str) -> socket.socket:
    host, port = base.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=5)


def _drip_until_closed(sockets: list[socket.socket], data: bytes, *, head: bytes = b"") -> dict[int, bytes]:
    """Send ``head`` on each socket, then ``data`` one byte per DRIP_EVERY_S on every socket, until the server
    has closed each of them; returns what each received. Fails if one is still open after HANG_S."""
    for sock in sockets:
        if head:
            sock.sendall(head)
    received = {index: b"" for index in range(len(sockets))}
    open_ = dict(enumerate(sockets))
    deadline = time.monotonic() + HANG_S
    position = 0
    while open_:
        assert time.monotonic() < deadline, f"{len(open_)} of {len(sockets)} slow sockets still open after {HANG_S} s"
        for index, sock in list(open_.items()):
            try:
                sock.send(data[position % len(data):position % len(data) + 1])
            except OSError:  # closed by the server (reset or broken pipe): keep what it said before
                received[index] += _rest(sock)
                del open_[index]
        position += 1
        wait_until = time.monotonic() + DRIP_EVERY_S
        while open_ and time.monotonic() < wait_until:
            readable, _, _ = select.select(list(open_.values()), [], [], max(wait_until - time.monotonic(), 0))
            for sock in readable:
                index = next(i for i, s in open_.items() if s is sock)
                try:
                    chunk = sock.recv(65536)
                except OSError:
                    chunk = b""
                received[index] += chunk
                if not chunk:  # the server closed it
                    del open_[index]
    for sock in sockets:
        sock.close()
    return received


def _rest(sock: socket.socket) -> bytes:
    """What is left to read on a socket the server has closed."""
    sock.setblocking(False)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except OSError:
        pass
    return data


def _error_of(answer: bytes) -> dict[str, str]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:200]
    return json.loads(body)["error"]


def test_sockets_that_drip_their_headers_are_closed_and_others_are_served(served: str) -> None:
    sockets = [_connect(served) for _ in range(20)]
    request = b"GET /livez HTTP/1.1\r\nHost: test\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    # an ordinary request is answered while the slow ones are open
    assert httpx.get(f"{served}/livez", timeout=10).json() == {"status": "ok"}
    received = _drip_until_closed(sockets, request)
    for answer in received.values():
        error = _error_of(answer)
        assert error["code"] == "request_timeout"
        assert "HEADER_TIMEOUT_S" in error["message"] and "Traceback" not in error["message"]
    assert httpx.get(f"{served}/livez", timeout=10).json() == {"status": "ok"}


def test_a_socket_that_sends_nothing_is_closed_without_an_answer(served: str) -> None:
    with _connect(served) as sock:
        sock.settimeout(HANG_S)
        assert sock.recv(1024) == b""  # closed at the header deadline, nothing said


def test_sockets_that_drip_their_body_are_closed(served: str) -> None:
    # the head arrives at once, the 1000-byte body one byte at a time
    head = (b"POST /infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    sockets = [_connect(served) for _ in range(5)]
    received = _drip_until_closed(sockets, b" " * 1000, head=head)
    for answer in received.values():
        error = _error_of(answer)
        assert error["code"] == "request_timeout" and "BODY_TIMEOUT_S" in error["message"]
    assert httpx.get(f"{served}/livez", timeout=10).status_code == 200


def test_an_upload_that_keeps_coming_is_not_cut(served: str) -> None:
    # 40 bytes in 4 pieces over about 1.2 s: past BODY_TIMEOUT_S (1 s), but each 10 bytes buy
    # another second (BODY_MIN_BYTES_PER_S=10 here), so it completes and gets the route's answer.
    body = b" " * 40
    with _connect(served) as sock:
        sock.sendall(b"POST /infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 40\r\nConnection: close\r\n\r\n")
        for start in range(0, 40, 10):
            sock.sendall(body[start:start + 10])
            time.sleep(0.4)
        sock.settimeout(HANG_S)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 ") and not answer.startswith(b"HTTP/1.1 408"), answer[:200]


def test_a_kept_alive_connection_is_served_again_then_closed_when_idle(served: str) -> None:
    with _connect(served) as sock:
        sock.settimeout(HANG_S)
        for _ in range(2):
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                chunk = sock.recv(65536)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert sock.recv(1024) == b""  # idle: closed, with no 408


def test_serve_runs_uvicorn_with_the_deadlines_of_the_settings(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    from photolabel.adapters import cli
    from photolabel.adapters.http import lifecycle

    calls: list[dict] = []
    monkeypatch.setattr(lifecycle, "serve_app", lambda app, **options: calls.append(options))
    env = {"DATA_DIR": str(tmp_path / "data"), "HEADER_TIMEOUT_S": "3", "BODY_TIMEOUT_S": "40",
           "BODY_MIN_BYTES_PER_S": "1000", "API_HOST": "127.0.0.1", "API_TOKEN": ""}
    result = CliRunner().invoke(cli.main, ["serve", "--port", "0"], env=env)
    assert result.exit_code == 0, result.output
    protocol = calls[0]["http"]
    assert issubclass(protocol, DeadlineProtocol)
    assert (protocol.header_timeout, protocol.body_timeout, protocol.body_min_bytes_per_s) == (3, 40, 1000)
