"""The URI layer: read, list and write what a path or a URI names.

Every image, CSV, archive or model directory is reached through the functions here;
callers never test a URI's scheme themselves. Each scheme has a back-end, registered
by name (the habit of httpx's ``Client(mounts=...)`` and fsspec's
``get_filesystem_class``):

- plain paths and ``file://``: :class:`LocalBackend` (atomic writes);
- ``http://``, ``https://``: :class:`HttpBackend`, read-only, through
  :mod:`photolabel.fetch` and its caps (timeout, size, redirects, pool size and, with
  ``allow_private=False``, no private addresses);
- ``s3://``, ``gs://``, ``az://``, ``memory://`` and their aliases: :class:`FsspecBackend`.
  fsspec itself is a dependency; the cloud packages (s3fs, gcsfs, adlfs) come with
  ``pip install 'photolabel[cloud]'``.

Adding a scheme is one back-end (or an existing one) and one line::

    register_scheme("ftp", FsspecBackend())

Only registered schemes are accepted, not every protocol fsspec knows: some of those
(``local://``, ``zip://``, ``reference://``, chained ``simplecache::...``) reach local
files, which a manifest that came from elsewhere must not be able to name.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import threading
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from photolabel.errors import (
    AccessDeniedError,
    DataError,
    FetchError,
    FetchTooLargeError,
    InsufficientStorageError,
    MissingDependencyError,
    OutputError,
    PhotolabelError,
    SourceNotFoundError,
    UnsupportedSchemeError,
)
from photolabel.fetch import DEFAULT_FETCH_OPTIONS, FetchOptions, each_concurrently, fetch_url
from photolabel.fsutil import atomic_write_bytes, file_url_path, is_storage_full

_URI_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_NAME = re.compile(r"[a-z][a-z0-9+.-]*")
_CLOUD_EXTRA = "pip install 'photolabel[cloud]'"

URI = str | os.PathLike[str]


# --- back-ends -------------------------------------------------------------------------------


class StorageBackend:
    """What one URI scheme can do. Each default refuses; a back-end overrides what it supports.

    ``remote`` is True for schemes that reach other machines: a CSV that came from
    elsewhere may list those, and nothing else. Every method raises
    :class:`~photolabel.errors.PhotolabelError` subclasses whose message names the URI.
    """

    remote: bool = False

    def read_bytes(self, uri: str, fetch: FetchOptions, max_bytes: int | None) -> bytes:
        raise _unsupported(uri, "cannot be read")

    def list_tree(self, uri: str) -> list[tuple[str, str]]:
        """``(name relative to uri, full URI)`` of every file under ``uri``, at any depth."""
        raise _unsupported(uri, "cannot be listed; name a file instead")

    def write_bytes(self, uri: str, data: bytes) -> None:
        raise _unsupported(uri, "cannot be written to")

    def exists(self, uri: str, fetch: FetchOptions) -> bool:
        raise _unsupported(uri, "cannot be checked for existence")

    def is_dir(self, uri: str) -> bool:
        return False

    def resolve(self, base: str, reference: str) -> str:
        """``reference`` (a relative name) against the file ``base`` names: a sibling of it."""
        parts = urllib.parse.urlsplit(base)
        # normpath keeps ".." from climbing above the root ("/../x" is "/x"): no other bucket
        path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path) or "/", reference))
        return f"{parts.scheme}://{parts.netloc}{path}"


class LocalBackend(StorageBackend):
    """Plain paths and ``file://`` URLs. Writes are atomic (temporary file, then ``os.replace``)."""

    remote = False

    def read_bytes(self, uri: str, fetch: FetchOptions, max_bytes: int | None) -> bytes:
        return read_local(local_path(uri), shown=uri, max_bytes=max_bytes)

    def list_tree(self, uri: str) -> list[tuple[str, str]]:
        root = local_path(uri)
        # a file:// URL spells a name with "%" or "#" in it quoted; a path spells it as it is
        spelled = urllib.parse.quote if scheme_of(uri) else str
        entries: list[tuple[str, str]] = []
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                relative = Path(dirpath, name).relative_to(root).as_posix()
                entries.append((relative, join(uri, spelled(relative))))
        return sorted(entries)

    def write_bytes(self, uri: str, data: bytes) -> None:
        path = local_path(uri)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, data)
        except OSError as exc:
            if is_storage_full(exc):
                raise InsufficientStorageError(f"{uri}: cannot write: not enough storage space") from exc
            raise OutputError(f"{uri}: cannot write ({exc.strerror or exc})") from exc

    def exists(self, uri: str, fetch: FetchOptions) -> bool:
        return local_path(uri).exists()

    def is_dir(self, uri: str) -> bool:
        return local_path(uri).is_dir()

    def resolve(self, base: str, reference: str) -> str:
        if scheme_of(base):
            return super().resolve(base, reference)
        return os.path.join(os.path.dirname(base), reference)


class HttpBackend(StorageBackend):
    """``http(s)://``: read-only, through :func:`photolabel.fetch.fetch_url` and its caps.

    A 401 or 403 answer is an :class:`~photolabel.errors.AccessDeniedError`; other
    failures stay the :class:`~photolabel.errors.FetchError` that fetch raises.
    """

    remote = True

    def read_bytes(self, uri: str, fetch: FetchOptions, max_bytes: int | None) -> bytes:
        options = fetch if max_bytes is None else dataclasses.replace(fetch, max_bytes=max_bytes)
        try:
            return fetch_url(uri, options)
        except FetchError as exc:
            if _http_status(exc) in (401, 403):
                raise AccessDeniedError(f"{exc} (access denied)") from exc
            raise

    def exists(self, uri: str, fetch: FetchOptions) -> bool:
        # fetch has no HEAD: a GET under the same caps, whose body is dropped
        try:
            self.read_bytes(uri, fetch, None)
        except FetchTooLargeError:
            return True
        except FetchError as exc:
            if _http_status(exc) in (404, 410):
                return False
            raise
        return True

    def resolve(self, base: str, reference: str) -> str:
        return urllib.parse.urljoin(base, reference)


class FsspecBackend(StorageBackend):
    """A protocol served by fsspec (``s3://``, ``gs://``, ``az://``, ``memory://``, ...).

    ``remote``: whether the protocol reaches other machines (``memory://`` does not).
    ``options``: a function of the protocol that returns the keyword arguments of its
    filesystem (endpoint, credentials), called on every use so that it sees changes.

    Reads are capped at ``max_bytes`` (by default the fetch options' ``max_bytes``) with
    a ranged read, so an object over the cap is never downloaded whole.
    """

    def __init__(self, *, remote: bool = True, options: Callable[[str], dict[str, Any]] | None = None) -> None:
        self.remote = remote
        self._options = options

    def read_bytes(self, uri: str, fetch: FetchOptions, max_bytes: int | None) -> bytes:
        cap = fetch.max_bytes if max_bytes is None else max_bytes
        fs, path = self._filesystem(uri)
        with _translated(uri, "read"):
            try:
                data = fs.cat_file(path, start=0, end=cap + 1)
            except (FileNotFoundError, PermissionError, IsADirectoryError):
                raise
            except OSError:
                # S3 calls any range of an empty object "not satisfiable" (HTTP 416)
                if fs.info(path).get("size") != 0:
                    raise
                data = b""
        if len(data) > cap:
            raise FetchTooLargeError(f"cannot read {uri}: the object is over the cap of {cap} bytes")
        return bytes(data)

    def list_tree(self, uri: str) -> list[tuple[str, str]]:
        fs, path = self._filesystem(uri)
        root = path.rstrip("/")
        with _translated(uri, "list"):
            found = fs.find(root, withdirs=False)
        entries: list[tuple[str, str]] = []
        for name in found:
            rest = name[len(root):] if name.startswith(root) else ""
            if root and not rest.startswith("/"):
                continue  # the prefix itself as a file, or a sibling such as data2/ beside data/
            relative = rest.lstrip("/")
            if relative:
                entries.append((relative, join(uri, relative)))
        return sorted(entries)

    def write_bytes(self, uri: str, data: bytes) -> None:
        fs, path = self._filesystem(uri)
        with _translated(uri, "write"):
            fs.pipe_file(path, data)

    def exists(self, uri: str, fetch: FetchOptions) -> bool:
        fs, path = self._filesystem(uri)
        with _translated(uri, "check"):
            return bool(fs.exists(path))

    def is_dir(self, uri: str) -> bool:
        fs, path = self._filesystem(uri)
        with _translated(uri, "check"):
            return bool(fs.isdir(path))

    def _filesystem(self, uri: str) -> tuple[Any, str]:
        if "::" in uri:
            raise UnsupportedSchemeError(f"{uri}: chained URLs (with '::') are not accepted")
        protocol = scheme_of(uri)
        # No listings cache: a long-running process must see objects that others write.
        options = {"use_listings_cache": False, **(self._options(protocol) if self._options else {})}
        fs = _filesystem(uri, protocol, options)
        return fs, fs._strip_protocol(uri)


def s3_options(protocol: str) -> dict[str, Any]:
    """s3fs arguments from the standard AWS variables.

    AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL (unless AWS_IGNORE_CONFIGURED_ENDPOINT_URLS
    is true), AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN; unset
    ones are left to botocore's own search (profiles, instance roles).
    """
    # The library reads no environment elsewhere (adapters do), but these variables are
    # the S3 convention and botocore reads them by itself anyway (AWS_ENDPOINT_URL
    # included: checked with botocore 1.43 / s3fs 2026.9). They are passed on explicitly
    # only to be part of the filesystem cache's key, so that a process whose variables
    # change gets a client built with the new values.
    env = os.environ
    options: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and env.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").lower() != "true":
        options["endpoint_url"] = endpoint
    for variable, argument in (
        ("AWS_ACCESS_KEY_ID", "key"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_SESSION_TOKEN", "token"),
    ):
        if env.get(variable):
            options[argument] = env[variable]
    return options


# --- the registry ----------------------------------------------------------------------------

_BACKENDS: dict[str, StorageBackend] = {}


def register_scheme(scheme: str, backend: StorageBackend) -> None:
    """Serve URIs of ``scheme`` (``"s3"``; ``""`` for plain paths) with ``backend``.

    A later registration of the same scheme replaces the earlier one.
    Raises ``ValueError`` for a scheme that is not a valid URI scheme name.
    """
    name = scheme.lower()
    if name and not _SCHEME_NAME.fullmatch(name):
        raise ValueError(f"{scheme!r} is not a URI scheme name")
    _BACKENDS[name] = backend


def known_schemes() -> list[str]:
    """The registered schemes, sorted (plain paths, registered as "", left out)."""
    return sorted(name for name in _BACKENDS if name)


def backend_for(uri: URI) -> StorageBackend:
    """The back-end registered for ``uri``'s scheme.

    Raises :class:`~photolabel.errors.UnsupportedSchemeError` for an unregistered scheme;
    the message lists the registered ones.
    """
    text = os.fspath(uri)
    scheme = scheme_of(text)
    backend = _BACKENDS.get(scheme)
    if backend is None:
        known = ", ".join(f"{name}://" for name in known_schemes())
        raise UnsupportedSchemeError(f"{text}: unsupported URL scheme '{scheme}' (use a path or one of {known})")
    return backend


# --- URIs ------------------------------------------------------------------------------------


def scheme_of(uri: URI) -> str:
    """The lower-case scheme of ``uri`` (``"s3"``, ``"https"``, ``"file"``), or ``""`` for a plain path."""
    match = _URI_SCHEME.match(os.fspath(uri))
    return match.group(1).lower() if match else ""


def is_local(uri: URI) -> bool:
    """Whether ``uri`` is a plain path or a ``file://`` URL (read in place, never downloaded)."""
    return isinstance(_BACKENDS.get(scheme_of(uri)), LocalBackend)


def is_remote(uri: URI) -> bool:
    """Whether ``uri``'s scheme reaches other machines (http(s), object stores).

    False for paths, ``file://``, ``memory://`` and unregistered schemes; never raises.
    """
    backend = _BACKENDS.get(scheme_of(uri))
    return backend is not None and backend.remote


def local_path(uri: URI) -> Path:
    """The local path a plain path or a ``file://`` URL names.

    Raises :class:`~photolabel.errors.DataError` for a ``file://`` URL with a host and
    :class:`~photolabel.errors.UnsupportedSchemeError` for any other scheme.
    """
    text = os.fspath(uri)
    if not is_local(text):
        raise UnsupportedSchemeError(f"{text}: not a local path or a file:// URL")
    return file_url_path(text) if scheme_of(text) else Path(text)


def join(uri: URI, *parts: str) -> str:
    """``uri`` with ``parts`` appended, separated by "/" (``os.path.join`` for plain paths)."""
    text = os.fspath(uri)
    if not scheme_of(text):
        return os.path.join(text, *parts)
    pieces = [part.strip("/") for part in parts if part.strip("/")]
    if not pieces:
        return text
    head = text.rstrip("/")
    if head.endswith(":"):  # "memory://", "file:///": the slashes belong to the scheme
        head = text
    return head + ("" if head.endswith("/") else "/") + "/".join(pieces)


def resolve(base: URI, reference: str) -> str:
    """``reference`` resolved against the file ``base`` names, as a link in a page is.

    A full URI is returned as it is; a relative name becomes a sibling of ``base``
    (``..`` cannot climb above the bucket or host).
    """
    if scheme_of(reference):
        return reference
    return backend_for(base).resolve(os.fspath(base), reference)


def basename(uri: URI) -> str:
    """The last part of ``uri``'s path (no query string): ``"data.csv"`` for ``s3://b/x/data.csv``."""
    text = os.fspath(uri)
    if not scheme_of(text):
        return os.path.basename(text.rstrip(os.sep))
    return PurePosixPath(urllib.parse.urlsplit(text).path).name


def check_uri(uri: URI) -> None:
    """Raise :class:`~photolabel.errors.UnsupportedSchemeError` unless ``uri``'s scheme is registered."""
    backend_for(uri)


# --- reading, listing, writing ---------------------------------------------------------------


def read_bytes(uri: URI, fetch: FetchOptions = DEFAULT_FETCH_OPTIONS, max_bytes: int | None = None) -> bytes:
    """The bytes ``uri`` names.

    ``max_bytes`` caps the size; None means ``fetch.max_bytes`` for URIs and no cap for
    local files. Raises :class:`~photolabel.errors.SourceNotFoundError` (no such file or
    object), :class:`~photolabel.errors.AccessDeniedError`,
    :class:`~photolabel.errors.FetchTooLargeError`, :class:`~photolabel.errors.FetchError`
    (unreachable, HTTP error, unsupported scheme),
    :class:`~photolabel.errors.MissingDependencyError` (the scheme's package is not
    installed) or :class:`~photolabel.errors.DataError` (a folder); each names the URI.
    """
    text = os.fspath(uri)
    return backend_for(text).read_bytes(text, fetch, max_bytes)


def read_each(
    uris: Sequence[URI], fetch: FetchOptions = DEFAULT_FETCH_OPTIONS, *, progress: bool = False
) -> Iterator[tuple[int, bytes | PhotolabelError]]:
    """Read ``uris`` concurrently (``fetch.pool_size`` at a time); yield ``(index, bytes or error)``.

    Results come in completion order, so a caller that writes each to disk holds at most
    a pool's worth in memory. Failures (the errors :func:`read_bytes` raises) are yielded.
    """
    return each_concurrently(partial(_read_or_error, fetch=fetch), list(uris), fetch.pool_size, progress=progress)


def read_many(
    uris: Sequence[URI], fetch: FetchOptions = DEFAULT_FETCH_OPTIONS, *, progress: bool = False
) -> list[bytes | PhotolabelError]:
    """Read ``uris`` concurrently; one item per URI, in order: its bytes or the error that explains why not."""
    by_index = dict(read_each(uris, fetch, progress=progress))
    return [by_index[index] for index in range(len(uris))]


def list_tree(uri: URI) -> list[tuple[str, str]]:
    """``(name, full URI)`` of every file under the folder or prefix ``uri``, sorted by name.

    Names are relative to ``uri`` with "/" separators; a missing folder or an empty
    prefix lists nothing. Raises :class:`~photolabel.errors.DataError` for a name with
    an empty, "." or ".." part (it cannot be mirrored as a file), and what
    :func:`read_bytes` raises for an unreachable store.
    """
    text = os.fspath(uri)
    entries = backend_for(text).list_tree(text)
    for name, file_uri in entries:
        if any(part in ("", ".", "..") for part in name.split("/")):
            raise DataError(f"{file_uri}: a name with an empty, '.' or '..' part cannot be used as a file name")
    return entries


def list_files(uri: URI) -> list[str]:
    """The full URIs of every file under the folder or prefix ``uri``, sorted; see :func:`list_tree`."""
    return [file_uri for _, file_uri in list_tree(uri)]


def write_bytes(uri: URI, data: bytes) -> None:
    """Write ``data`` at ``uri``, creating parent folders; a local file is replaced atomically.

    Raises :class:`~photolabel.errors.OutputError`,
    :class:`~photolabel.errors.AccessDeniedError` or
    :class:`~photolabel.errors.UnsupportedSchemeError` (e.g. http), naming the URI.
    """
    text = os.fspath(uri)
    backend_for(text).write_bytes(text, data)


def exists(uri: URI, fetch: FetchOptions = DEFAULT_FETCH_OPTIONS) -> bool:
    """Whether a file, object or folder is at ``uri``. ``fetch`` applies to http(s), which is checked with a GET.

    Raises :class:`~photolabel.errors.AccessDeniedError` when the store refuses to say.
    """
    text = os.fspath(uri)
    return backend_for(text).exists(text, fetch)


def is_dir(uri: URI) -> bool:
    """Whether ``uri`` is a folder, or a prefix with objects under it (never for http(s))."""
    text = os.fspath(uri)
    return backend_for(text).is_dir(text)


def upload_tree(local_dir: str | os.PathLike[str], uri: URI, *, last: str | None = "model.json") -> list[str]:
    """Copy every file under ``local_dir`` to the same names under ``uri``; returns the URIs written.

    The file named ``last`` (relative to ``local_dir``) is written after all the others,
    so a reader that waits for it never sees half a tree. Raises
    :class:`~photolabel.errors.SourceNotFoundError` when ``local_dir`` is not a folder,
    and what :func:`write_bytes` raises.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise SourceNotFoundError(f"{root}: no such folder")
    written: list[str] = []
    for name in _last_named(last, [name for name, _ in list_tree(str(root))]):
        target = join(uri, name)
        write_bytes(target, read_local(root / name, shown=str(root / name)))
        written.append(target)
    return written


def download_tree(
    uri: URI,
    local_dir: str | os.PathLike[str],
    *,
    fetch: FetchOptions = DEFAULT_FETCH_OPTIONS,
    last: str | None = "model.json",
) -> Path:
    """Copy every file under ``uri`` into ``local_dir`` (created if needed); returns it as a Path.

    Files are read concurrently, each capped at ``fetch.max_bytes``, and written only
    once all were read, the one named ``last`` after the others. Raises
    :class:`~photolabel.errors.SourceNotFoundError` when nothing is under ``uri``, and
    the first error (by name) of :func:`read_bytes`.
    """
    text = os.fspath(uri)
    entries = list_tree(text)
    if not entries:
        raise SourceNotFoundError(f"{text}: no files under it")
    bodies = dict(zip((name for name, _ in entries), read_many([u for _, u in entries], fetch)))
    for body in bodies.values():
        if isinstance(body, PhotolabelError):
            raise body
    root = Path(local_dir)
    for name in _last_named(last, list(bodies)):
        write_bytes(str(root / name), bodies[name])  # type: ignore[arg-type]
    return root


def read_local(path: Path, shown: str, max_bytes: int | None = None) -> bytes:
    """The bytes of the local file ``path``; ``shown`` is how messages name it.

    Raises :class:`~photolabel.errors.SourceNotFoundError`,
    :class:`~photolabel.errors.DataError` (a folder, an unreadable file) or
    :class:`~photolabel.errors.FetchTooLargeError` (over ``max_bytes``).
    """
    try:
        too_large = max_bytes is not None and path.is_file() and path.stat().st_size > max_bytes
        data = b"" if too_large else path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SourceNotFoundError(f"{shown}: not found ({path})") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{shown}: is a folder, not an image file") from exc
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror})") from exc
    if too_large:
        raise FetchTooLargeError(f"{shown}: the file is over the cap of {max_bytes} bytes")
    return data


# --- helpers ---------------------------------------------------------------------------------


def _read_or_error(uri: URI, fetch: FetchOptions) -> bytes | PhotolabelError:
    try:
        return read_bytes(uri, fetch)
    except PhotolabelError as exc:
        return exc


def _last_named(last: str | None, names: list[str]) -> list[str]:
    """``names`` sorted, with ``last`` (when present) moved to the end."""
    return sorted(names, key=lambda name: (name == last, name))


def _unsupported(uri: str, what: str) -> UnsupportedSchemeError:
    return UnsupportedSchemeError(f"{uri}: {scheme_of(uri)}:// URIs {what}")


def _http_status(error: FetchError) -> int | None:
    cause = error.__cause__
    return cause.code if isinstance(cause, urllib.error.HTTPError) else None


_FILESYSTEMS: dict[tuple[Any, ...], Any] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _filesystem(uri: str, protocol: str, options: dict[str, Any]) -> Any:
    """One fsspec filesystem per protocol and options, shared by every thread.

    fsspec's own instance cache keys on the thread too, so each worker thread of a
    read pool would build (and keep) a client of its own; this cache does not.
    """
    key = (os.getpid(), protocol, tuple(sorted((name, repr(value)) for name, value in options.items())))
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
        if fs is None:
            filesystem_class = _filesystem_class(uri, protocol)
            with _translated(uri, "open"):
                fs = filesystem_class(skip_instance_cache=True, **options)
            _FILESYSTEMS[key] = fs
    return fs


def _filesystem_class(uri: str, protocol: str) -> Any:
    try:
        import fsspec
        from fsspec.registry import known_implementations
    except ImportError as exc:
        raise MissingDependencyError(f"{uri}: reading {protocol}:// needs fsspec: pip install fsspec") from exc
    try:
        return fsspec.get_filesystem_class(protocol)
    except ImportError as exc:
        package = known_implementations.get(protocol, {}).get("class", "").split(".")[0] or "its fsspec package"
        raise MissingDependencyError(
            f"{uri}: {protocol}:// needs {package}, which is not installed: {_CLOUD_EXTRA} (or pip install {package})"
        ) from exc
    except ValueError as exc:
        raise UnsupportedSchemeError(f"{uri}: fsspec knows no protocol '{protocol}'") from exc


@contextmanager
def _translated(uri: str, action: str) -> Iterator[None]:
    """Turn what a back-end raises into photolabel's errors, each naming ``uri``."""
    try:
        yield
    except PhotolabelError:
        raise
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SourceNotFoundError(f"{uri}: not found{_detail(exc, uri)}") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{uri}: is a folder, not a file") from exc
    except PermissionError as exc:
        raise _access_denied(uri, action, _detail(exc, uri)) from exc
    except Exception as exc:
        if type(exc).__name__ in _CREDENTIAL_ERRORS:
            raise _access_denied(uri, action, f" ({type(exc).__name__}: {_one_line(exc)})") from exc
        if is_storage_full(exc):  # a local disk (a cache, memory:// spilling) or the store's quota is full
            raise InsufficientStorageError(f"cannot {action} {uri}: not enough storage space") from exc
        # Back-ends raise their own types (botocore, aiohttp, azure); each is a failure to reach the URI.
        error = OutputError if action == "write" else FetchError
        raise error(f"cannot {action} {uri}: {type(exc).__name__}: {_one_line(exc)}") from exc


#: what cloud clients raise when they have no usable credentials (botocore, google-auth, azure-identity);
#: matched by name, since none of these packages need be installed
_CREDENTIAL_ERRORS = frozenset({
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "DefaultCredentialsError",
    "RefreshError",
    "ClientAuthenticationError",
    "CredentialUnavailableError",
})


def _access_denied(uri: str, action: str, detail: str) -> AccessDeniedError:
    return AccessDeniedError(f"cannot {action} {uri}: access denied{detail}; check the credentials and the permissions")


def _detail(exc: BaseException, uri: str) -> str:
    text = _one_line(exc)
    return f" ({text})" if text and text not in uri else ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# --- the schemes served out of the box ---------------------------------------------------------

_LOCAL = LocalBackend()
register_scheme("", _LOCAL)
register_scheme("file", _LOCAL)
register_scheme("http", HttpBackend())
register_scheme("https", HttpBackend())
for _scheme in ("s3", "s3a"):
    register_scheme(_scheme, FsspecBackend(options=s3_options))
for _scheme in ("gs", "gcs", "az", "abfs"):
    register_scheme(_scheme, FsspecBackend())
register_scheme("memory", FsspecBackend(remote=False))
