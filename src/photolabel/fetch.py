"""Fetch http(s) URLs with caps: size, redirects, time, and optionally no private addresses.

Only the standard library is used. Every failure is a :class:`~photolabel.errors.FetchError`
whose one-line message names the URL and the cause. Callers reach it through
:mod:`photolabel.storage`, which serves ``file://``, paths and the other schemes.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import ipaddress
import itertools
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from photolabel.errors import FetchError, FetchTooLargeError, UnsupportedSchemeError, UrlBlockedError
from photolabel.progress import progress_bar

_CHUNK = 1 << 16
_SCHEMES = ("http", "https")
_USER_AGENT = "photolabel"

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class FetchOptions:
    """Limits for fetching URLs. Adapters fill these from HTTP_TIMEOUT and DOWNLOAD_POOL_SIZE.

    ``timeout`` is one deadline for the whole fetch: connecting, the TLS handshake, the
    status line, the headers and the body, on every redirect hop (name lookups keep the
    system resolver's own timeouts). A server that sends its headers one byte at a time is
    cut at the deadline like any other.
    ``allow_private=False`` (the HTTP service) refuses hosts that resolve to private,
    loopback, link-local, multicast or reserved addresses, on every redirect hop; the
    check is made on the address actually connected to, and environment proxies are
    not used in that mode because a proxy would hide the destination.
    """

    timeout: float = 120.0
    max_bytes: int = 50 * 1024**2
    max_redirects: int = 5
    pool_size: int = 16
    allow_private: bool = True

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError(f"FetchOptions.timeout must be > 0 seconds, got {self.timeout!r}")
        if self.max_bytes < 0:
            raise ValueError(f"FetchOptions.max_bytes must be >= 0, got {self.max_bytes!r}")
        if self.max_redirects < 0:
            raise ValueError(f"FetchOptions.max_redirects must be >= 0, got {self.max_redirects!r}")
        if self.pool_size < 1:
            raise ValueError(f"FetchOptions.pool_size must be >= 1, got {self.pool_size!r}")


#: the defaults, shared (the dataclass is frozen) so that signatures need not call FetchOptions()
DEFAULT_FETCH_OPTIONS = FetchOptions()


class _Refused(OSError):
    """A fetch stopped on purpose; the message is the cause, without the URL."""


class _TooLarge(_Refused):
    """A body over the cap."""


class _Blocked(_Refused):
    """A host that resolves to an address the options do not allow (private, loopback, ...)."""


class _BadScheme(_Refused):
    """A URL (or a redirect) to another scheme than http(s)."""


class _TimedOut(_Refused):
    """The fetch's deadline passed."""


def fetch_url(url: str, options: FetchOptions = DEFAULT_FETCH_OPTIONS) -> bytes:
    """The body of an http(s) URL.

    Raises :class:`FetchError` for an unsupported scheme, an HTTP error status, a
    timeout (``options.timeout`` bounds the whole fetch, connection and headers
    included), a refused or failed connection, a body over ``options.max_bytes``, more
    than ``options.max_redirects`` redirects, or (with ``allow_private=False``) a host
    that resolves to a non-public address.
    """
    deadline = _Deadline(options.timeout)
    try:
        try:
            body = _fetch(url, options, deadline)
        finally:
            deadline.finish()
        if not deadline.expired:
            return body
        cause, error = _timed_out(options), _TimedOut()
    except urllib.error.HTTPError as exc:
        exc.close()
        reason = " ".join(str(exc.reason).split())
        cause, error = f"HTTP {exc.code} {reason}".rstrip(), exc
    except urllib.error.URLError as exc:
        cause, error = _describe(exc.reason, options), exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        cause, error = _describe(exc, options), exc
    if deadline.expired:  # whatever broke when the deadline closed the socket, the cause is the deadline
        cause = _timed_out(options)
    why = getattr(error, "reason", None)
    kind: type[FetchError] = FetchError
    for refusal, error_class in ((_TooLarge, FetchTooLargeError), (_Blocked, UrlBlockedError),
                                 (_BadScheme, UnsupportedSchemeError)):
        if isinstance(error, refusal) or isinstance(why, refusal):
            kind = error_class
    raise kind(f"cannot fetch {url}: {cause}") from error


def fetch_each(
    urls: Sequence[str], options: FetchOptions = DEFAULT_FETCH_OPTIONS, *, progress: bool = False
) -> Iterator[tuple[int, bytes | FetchError]]:
    """Fetch ``urls`` concurrently and yield ``(index, body or FetchError)`` as each finishes.

    Results are yielded in completion order, so a caller that writes each body to disk
    keeps at most a pool's worth of bodies in memory. Failures are yielded, not raised.
    """
    return each_concurrently(partial(_fetch_or_error, options=options), urls, options.pool_size, progress=progress)


def each_concurrently(
    work: Callable[[_Item], _Result], items: Sequence[_Item], pool_size: int, *, progress: bool = False
) -> Iterator[tuple[int, _Result]]:
    """Run ``work`` on each item, ``pool_size`` at a time; yield ``(index, result)`` as each finishes.

    ``work`` should return its failures rather than raise them (an exception it raises
    ends the iteration). The pool is made per call and dropped on early exit: the items
    not started yet are cancelled, running ones end on their own.
    """
    if not items:
        return
    executor = ThreadPoolExecutor(max_workers=min(pool_size, len(items)), thread_name_prefix="photolabel-fetch")
    try:
        with progress_bar("download", len(items), enabled=progress) as bar:
            pending: dict[Future[_Result], int] = {
                executor.submit(work, item): index for index, item in enumerate(items)
            }
            for future in as_completed(list(pending)):
                index = pending.pop(future)
                bar.advance()
                yield index, future.result()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


def fetch_many(
    urls: Sequence[str], options: FetchOptions = DEFAULT_FETCH_OPTIONS, *, progress: bool = False
) -> list[bytes | FetchError]:
    """Fetch ``urls`` concurrently (``options.pool_size`` at a time).

    Returns one item per URL, in the input order: the body, or the :class:`FetchError`
    that explains why it could not be fetched (failures are returned, not raised).
    """
    by_index = dict(fetch_each(urls, options, progress=progress))
    return [by_index[index] for index in range(len(urls))]


def _fetch_or_error(url: str, options: FetchOptions) -> bytes | FetchError:
    try:
        return fetch_url(url, options)
    except FetchError as exc:
        return exc


def _fetch(url: str, options: FetchOptions, deadline: _Deadline) -> bytes:
    _check_scheme(url)
    opener = _build_opener(options, deadline)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    _WATCHDOG.add(deadline)
    with opener.open(request, timeout=options.timeout) as response:
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > options.max_bytes:
            raise _TooLarge(f"response of {int(declared)} bytes is over the cap of {options.max_bytes} bytes")
        chunks: list[bytes] = []
        received = 0
        # read1 returns what one receive brings, so the deadline is checked often.
        while chunk := response.read1(_CHUNK):
            received += len(chunk)
            if received > options.max_bytes:
                raise _TooLarge(f"response is over the cap of {options.max_bytes} bytes")
            deadline.check()
            chunks.append(chunk)
        deadline.check()
        if getattr(response, "length", None):  # read1 ends quietly when the server closes early
            raise http.client.IncompleteRead(b"".join(chunks), response.length)
    return b"".join(chunks)


class _Deadline:
    """One fetch's deadline, ``seconds`` from now, over every connection it opens.

    Each connection takes the time left as its socket timeout (so connecting and the TLS
    handshake end by the deadline), and registers with :meth:`watch`; when the deadline
    passes, the watchdog thread (:data:`_WATCHDOG`) shuts the sockets of the connections
    still open, which ends any read in progress however slowly the server sends.
    """

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds
        self.expired = False
        self.done = False
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []

    def check(self) -> float:
        """The seconds left; raises :class:`_TimedOut` once the deadline has passed."""
        left = self.at - time.monotonic()
        if left <= 0 or self.expired:
            raise _TimedOut("the deadline passed")
        return left

    def watch(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if self.expired:
                raise _TimedOut("the deadline passed")
            self._connections.append(connection)

    def finish(self) -> None:
        """The fetch is over: the watchdog leaves its sockets alone from now on."""
        with self._lock:
            self.done = True
            self._connections.clear()

    def expire(self) -> None:
        """Called by the watchdog at the deadline: shut the sockets of a fetch still running."""
        with self._lock:
            if self.done:
                return
            self.expired = True
            connections = list(self._connections)
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                # OSError: already closed, or not connected yet (its socket timeout ends it)
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One daemon thread that calls :meth:`_Deadline.expire` on each registered deadline when it passes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline) -> None:
        with self._cond:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="photolabel-fetch-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0][2].done:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        due = heapq.heappop(self._heap)[2]
                        break
                    self._cond.wait(wait)
            due.expire()


_WATCHDOG = _Watchdog()


def _check_scheme(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in _SCHEMES:
        shown = parts.scheme or "none"
        raise _BadScheme(f"unsupported URL scheme '{shown}' (only http and https)")
    if not parts.hostname:
        raise _Refused("the URL has no host")


def _build_opener(options: FetchOptions, deadline: _Deadline) -> urllib.request.OpenerDirector:
    public_only = not options.allow_private
    handlers: list[Any] = [_RedirectGuard(options.max_redirects), _DeadlineHTTPHandler(deadline, public_only),
                           _DeadlineHTTPSHandler(deadline, public_only)]
    if public_only:
        # Connect only to checked public addresses; no proxy, which would hide the destination.
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


class _RedirectGuard(urllib.request.HTTPRedirectHandler):
    """Counts redirects per fetch and refuses a hop to anything but http(s)."""

    # urllib's own loop detection would fire first with a less useful message.
    max_repeats = max_redirections = 1_000_000

    def __init__(self, max_redirects: int) -> None:
        super().__init__()
        self._max_redirects = max_redirects
        self._count = 0

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        self._count += 1
        try:
            if self._count > self._max_redirects:
                raise _Refused(f"too many redirects (more than {self._max_redirects})")
            _check_scheme(newurl)
        except _Refused:
            fp.close()
            raise
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _connect_public(
    address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT, source_address: Any = None
) -> socket.socket:
    """Like ``socket.create_connection``, but every address the host resolves to must be public.

    Checking at connect time (rather than before the request) covers each redirect hop and
    leaves no gap between the check and the connection for DNS to change its answer.
    """
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if not _is_public(ip):
            raise _Blocked(f"private address refused: host {host} resolves to {ip}, which is not public")
    last_error: OSError = OSError(f"no address found for {host}")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last_error = exc
    raise last_error


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    """A connection that ends by the fetch's deadline; ``public_only`` connects through :func:`_connect_public`."""

    def __init__(self, *args: Any, deadline: _Deadline, public_only: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        if public_only:
            self._create_connection = _connect_public

    def connect(self) -> None:
        self.timeout = self._deadline.check()
        self._deadline.watch(self)
        super().connect()


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, public_only: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline
        if public_only:
            self._create_connection = _connect_public

    def connect(self) -> None:
        self.timeout = self._deadline.check()
        self._deadline.watch(self)
        http.client.HTTPConnection.connect(self)  # TCP, and a proxy's tunnel if there is one
        server_hostname = self._tunnel_host or self.host
        # The handshake runs once self.sock is the TLS socket, so that the deadline can shut it.
        self.sock = self._context.wrap_socket(self.sock, server_hostname=server_hostname,
                                              do_handshake_on_connect=False)
        self._deadline.check()
        self.sock.do_handshake()


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline, public_only: bool) -> None:
        super().__init__()
        self._connection = partial(_DeadlineHTTPConnection, deadline=deadline, public_only=public_only)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline, public_only: bool) -> None:
        super().__init__()
        self._connection = partial(_DeadlineHTTPSConnection, deadline=deadline, public_only=public_only)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]


def _timed_out(options: FetchOptions) -> str:
    return f"timed out after {options.timeout:g} s (HTTP_TIMEOUT bounds the whole download, headers included)"


def _describe(reason: object, options: FetchOptions) -> str:
    """One line for the cause of a failed fetch."""
    if isinstance(reason, (_TimedOut, TimeoutError)):
        text = _timed_out(options)
    elif isinstance(reason, _Refused):
        text = str(reason)
    elif isinstance(reason, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(reason, ConnectionResetError):
        text = "connection reset by the server"
    elif isinstance(reason, socket.gaierror):
        text = f"host not found ({reason.strerror})"
    elif isinstance(reason, ssl.SSLCertVerificationError):
        text = f"TLS certificate verification failed ({reason.verify_message})"
    elif isinstance(reason, ssl.SSLError):
        text = f"TLS error ({reason.reason or reason})"
    elif isinstance(reason, http.client.IncompleteRead):
        text = "the connection closed before the whole response arrived"
    elif isinstance(reason, http.client.HTTPException):
        text = f"bad HTTP response ({type(reason).__name__}: {reason})"
    elif isinstance(reason, OSError) and reason.strerror:
        text = reason.strerror
    else:
        text = str(reason) or type(reason).__name__
    return " ".join(text.split())
