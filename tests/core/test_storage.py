"""photolabel.storage: one URI layer for paths, file://, http(s)://, memory:// and s3:// (a real server)."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import tarfile
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image
from support import serve_http

from photolabel import storage
from photolabel.dataset import manifest_rows
from photolabel.errors import (
    AccessDeniedError,
    DataError,
    FetchError,
    FetchTooLargeError,
    InsufficientStorageError,
    MissingDependencyError,
    SourceNotFoundError,
    UnsupportedSchemeError,
)
from photolabel.fetch import FetchOptions
from photolabel.sources import expand_image_args, load_dataset, read_image_source

_shade = iter(range(1, 1_000_000))


def png() -> bytes:
    """A tiny PNG whose bytes differ from every other one made here."""
    n = next(_shade)
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (n % 256, n // 256 % 256, 9)).save(buffer, format="PNG")
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def labelled_tree() -> dict[str, bytes]:
    """Two label folders, plus what a loader must leave out: hidden files, notes, a top-level file."""
    return {
        "cat/0.png": png(),
        "cat/1.png": png(),
        "dog/0.png": png(),
        "dog/sub/1.png": png(),
        "dog/notes.txt": b"not an image",
        "dog/.hidden.png": png(),
        ".cache/x.png": png(),
        "README.md": b"hello",
    }


# --- URIs --------------------------------------------------------------------------------------


def test_scheme_join_resolve_basename() -> None:
    assert storage.scheme_of("S3://bucket/k") == "s3"
    assert storage.scheme_of("/data/x.png") == ""
    assert storage.scheme_of(Path("rel/x.png")) == ""
    assert storage.join("s3://b", "data", "x.png") == "s3://b/data/x.png"
    assert storage.join("s3://b/data/", "/cat/0.png") == "s3://b/data/cat/0.png"
    assert storage.join("memory://", "a/b") == "memory://a/b"
    assert storage.join("file:///tmp/", "a") == "file:///tmp/a"
    assert storage.join("dir", "a/b.png") == os.path.join("dir", "a/b.png")
    assert storage.resolve("s3://b/lists/m.csv", "../data/x.png") == "s3://b/data/x.png"
    assert storage.resolve("s3://b/m.csv", "../../other-bucket/x.png") == "s3://b/other-bucket/x.png"
    assert storage.resolve("http://h/a/m.csv?v=1", "x.png") == "http://h/a/x.png"
    assert storage.resolve("s3://b/m.csv", "gs://c/y.png") == "gs://c/y.png"
    assert storage.basename("https://h/d/train.tar.gz?sig=1") == "train.tar.gz"
    assert storage.basename("s3://b/lists/m.csv") == "m.csv"
    assert storage.is_remote("s3://b/k") and storage.is_remote("https://h/x")
    assert not storage.is_remote("memory://k") and not storage.is_remote("file:///x")
    assert not storage.is_remote("/x") and not storage.is_remote("nope://x")
    assert storage.is_local("file:///x") and storage.is_local("x") and not storage.is_local("s3://b")


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(UnsupportedSchemeError) as caught:
        storage.read_bytes("ftp://example.com/a.png")
    message = str(caught.value)
    assert "ftp://example.com/a.png" in message and "unsupported URL scheme 'ftp'" in message
    assert "s3://" in message and "https://" in message and "memory://" in message
    assert isinstance(caught.value, FetchError)


def test_chained_urls_are_refused() -> None:
    with pytest.raises(UnsupportedSchemeError, match="chained"):
        storage.read_bytes("memory://x::file:///etc/hostname")


@pytest.mark.parametrize(("uri", "package"), [("gs://bucket/x.png", "gcsfs"), ("az://container/x.png", "adlfs")])
def test_protocol_without_its_package(uri: str, package: str) -> None:
    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed, so {uri} has its back-end")
    with pytest.raises(MissingDependencyError) as caught:
        storage.read_bytes(uri)
    message = str(caught.value)
    assert uri in message and "pip install 'photolabel[cloud]'" in message and package in message
    assert isinstance(caught.value, ImportError) and caught.value.code == "missing_dependency"
    with pytest.raises(MissingDependencyError):
        storage.list_files(uri)


def test_a_registered_scheme_serves_every_function(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Recording(storage.StorageBackend):
        """Objects in a dict; remembers the order of writes."""

        def __init__(self) -> None:
            self.objects: dict[str, bytes] = {}
            self.writes: list[str] = []

        def read_bytes(self, uri: str, fetch: FetchOptions, max_bytes: int | None) -> bytes:
            if uri not in self.objects:
                raise SourceNotFoundError(f"{uri}: not found")
            return self.objects[uri]

        def write_bytes(self, uri: str, data: bytes) -> None:
            self.objects[uri] = data
            self.writes.append(uri)

        def list_tree(self, uri: str) -> list[tuple[str, str]]:
            prefix = uri.rstrip("/") + "/"
            return sorted((name[len(prefix):], name) for name in self.objects if name.startswith(prefix))

    monkeypatch.setattr(storage, "_BACKENDS", dict(storage._BACKENDS))  # registrations end with the test
    backend = Recording()
    storage.register_scheme("rec", backend)
    assert "rec" in storage.known_schemes()

    model = {"model.json": b"{}", "head.npy": b"\x93NUMPY", "a/z.bin": b"z", "zzz.txt": b"last by name"}
    write_tree(tmp_path / "model", model)
    written = storage.upload_tree(tmp_path / "model", "rec://models/m1/")
    assert backend.writes == written
    assert written[-1] == "rec://models/m1/model.json"  # after zzz.txt, which sorts after it
    assert sorted(written) == sorted(f"rec://models/m1/{name}" for name in model)

    copy = storage.download_tree("rec://models/m1", tmp_path / "copy")
    assert {p.relative_to(copy).as_posix(): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == model
    with pytest.raises(SourceNotFoundError, match="rec://models/none"):
        storage.download_tree("rec://models/none", tmp_path / "nothing")
    with pytest.raises(UnsupportedSchemeError, match="cannot be checked"):
        storage.exists("rec://models/m1/model.json")


# --- local paths and file:// -----------------------------------------------------------------------


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_local_read_list_write(tmp_path: Path, as_uri: bool) -> None:
    root = tmp_path / "store"
    base = root.as_uri() if as_uri else str(root)
    storage.write_bytes(storage.join(base, "b/deep/x.bin"), b"x")
    storage.write_bytes(storage.join(base, "a.bin"), b"a")
    storage.write_bytes(storage.join(base, "a.bin"), b"a2")  # replaced, atomically
    assert sorted(p.name for p in root.rglob("*")) == ["a.bin", "b", "deep", "x.bin"]  # no temporary files left

    assert storage.read_bytes(storage.join(base, "a.bin")) == b"a2"
    assert storage.list_files(base) == [storage.join(base, "a.bin"), storage.join(base, "b/deep/x.bin")]
    assert storage.list_tree(storage.join(base, "b")) == [("deep/x.bin", storage.join(base, "b/deep/x.bin"))]
    assert storage.list_files(storage.join(base, "missing")) == []
    assert storage.exists(storage.join(base, "a.bin")) and not storage.exists(storage.join(base, "nope"))
    assert storage.is_dir(storage.join(base, "b")) and not storage.is_dir(storage.join(base, "a.bin"))

    missing = storage.join(base, "nope.png")
    with pytest.raises(SourceNotFoundError, match="nope.png"):
        storage.read_bytes(missing)
    with pytest.raises(DataError, match="is a folder"):
        storage.read_bytes(storage.join(base, "b"))
    with pytest.raises(FetchTooLargeError, match="over the cap of 1 bytes"):
        storage.read_bytes(storage.join(base, "a.bin"), max_bytes=1)

    (root / "odd 100% #1.bin").write_bytes(b"odd")  # listed URIs read back, whatever the name
    listed = dict(storage.list_tree(base))
    assert storage.read_bytes(listed["odd 100% #1.bin"]) == b"odd"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the writer is a forked process")
def test_a_local_write_that_does_not_fit_is_insufficient_storage_and_keeps_the_old_file(tmp_path: Path) -> None:
    """A real "file too large" (RLIMIT_FSIZE in a forked writer): the error says storage is full, the file
    that was there is unchanged and no temporary file is left."""
    import resource
    import select

    target = tmp_path / "store" / "a.bin"
    storage.write_bytes(str(target), b"old")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = "written"
        try:
            os.close(read_end)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
            storage.write_bytes(str(target), b"n" * 64 * 1024)
        except InsufficientStorageError as exc:
            code = exc.code
        except BaseException as exc:
            code = repr(exc)
        finally:
            os.write(write_end, code.encode())
            os._exit(0)
    os.close(write_end)
    try:
        assert select.select([read_end], [], [], 60)[0], "the writer never finished"
        assert os.read(read_end, 4096).decode() == "insufficient_storage"
    finally:
        os.waitpid(pid, 0)
        os.close(read_end)
    assert target.read_bytes() == b"old"
    assert [p.name for p in target.parent.iterdir()] == ["a.bin"]


def test_file_url_with_a_host_is_refused() -> None:
    with pytest.raises(DataError, match="must name a local file"):
        storage.read_bytes("file://server/share/x.png")


# --- memory:// (fsspec, in-process) -------------------------------------------------------------


@pytest.fixture
def memory_root() -> Iterator[str]:
    root = f"memory://photolabel-test-{uuid.uuid4().hex[:8]}"
    yield root
    import fsspec

    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_memory_read_list_write(memory_root: str) -> None:
    storage.write_bytes(f"{memory_root}/data/cat/0.png", b"cat")
    storage.write_bytes(f"{memory_root}/data/dog/1.png", b"dog")
    storage.write_bytes(f"{memory_root}/data2/other.png", b"sibling prefix")
    assert storage.read_bytes(f"{memory_root}/data/cat/0.png") == b"cat"
    assert storage.list_tree(f"{memory_root}/data/") == [
        ("cat/0.png", f"{memory_root}/data/cat/0.png"),
        ("dog/1.png", f"{memory_root}/data/dog/1.png"),
    ]
    assert storage.is_dir(f"{memory_root}/data") and storage.exists(f"{memory_root}/data/dog/1.png")
    assert not storage.exists(f"{memory_root}/data/eel.png")
    with pytest.raises(SourceNotFoundError, match=f"{memory_root}/data/eel.png"):
        storage.read_bytes(f"{memory_root}/data/eel.png")
    with pytest.raises(FetchTooLargeError, match="over the cap of 2 bytes"):
        storage.read_bytes(f"{memory_root}/data/cat/0.png", FetchOptions(max_bytes=2))


# --- http(s):// through the capped fetcher ----------------------------------------------------------


class _Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def do_GET(self) -> None:
        if self.path == "/secret.png":
            self.send_response(403)
            self.end_headers()
            return
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args: object) -> None:
        pass


def test_http_goes_through_the_capped_fetcher() -> None:
    files = {"/a.png": b"a" * 100}
    with serve_http(type("Handler", (_Files,), {"files": files})) as base:
        assert storage.read_bytes(f"{base}/a.png") == b"a" * 100
        assert storage.read_many([f"{base}/a.png", f"{base}/gone.png"])[0] == b"a" * 100
        with pytest.raises(FetchTooLargeError, match="over the cap of 10 bytes"):
            storage.read_bytes(f"{base}/a.png", max_bytes=10)
        with pytest.raises(FetchTooLargeError, match="over the cap of 50 bytes"):
            storage.read_bytes(f"{base}/a.png", FetchOptions(max_bytes=50))
        with pytest.raises(FetchError, match="private address refused"):
            storage.read_bytes(f"{base}/a.png", FetchOptions(allow_private=False))
        with pytest.raises(FetchError, match="HTTP 404"):
            storage.read_bytes(f"{base}/gone.png")
        with pytest.raises(AccessDeniedError, match=f"{base}/secret.png: HTTP 403"):
            storage.read_bytes(f"{base}/secret.png")
        assert storage.exists(f"{base}/a.png") and not storage.exists(f"{base}/gone.png")
        assert not storage.is_dir(f"{base}/a.png")
        with pytest.raises(UnsupportedSchemeError, match="cannot be listed"):
            storage.list_files(f"{base}/")
        with pytest.raises(UnsupportedSchemeError, match="cannot be written"):
            storage.write_bytes(f"{base}/new.png", b"x")


# --- s3:// against a real S3-compatible server -----------------------------------------------------


def test_s3_read_list_write(s3_bucket: str, tmp_path: Path) -> None:
    root = f"s3://{s3_bucket}"
    storage.write_bytes(f"{root}/data/cat/0.png", b"cat")
    storage.write_bytes(f"{root}/data/dog/1.png", b"dog")
    storage.write_bytes(f"{root}/database/x.png", b"a sibling, not under data/")
    storage.write_bytes(f"{root}/empty.bin", b"")

    assert storage.read_bytes(f"{root}/data/cat/0.png") == b"cat"
    assert storage.read_bytes(f"{root}/empty.bin") == b""
    assert storage.list_files(f"{root}/data") == [f"{root}/data/cat/0.png", f"{root}/data/dog/1.png"]
    assert storage.list_files(f"{root}/data/") == [f"{root}/data/cat/0.png", f"{root}/data/dog/1.png"]
    assert storage.list_files(f"{root}/nothing-here/") == []
    assert storage.exists(f"{root}/data/cat/0.png") and not storage.exists(f"{root}/data/cat/9.png")
    assert storage.is_dir(f"{root}/data") and not storage.is_dir(f"{root}/data/cat/0.png")
    with pytest.raises(FetchTooLargeError, match=f"{root}/data/cat/0.png.*over the cap of 2 bytes"):
        storage.read_bytes(f"{root}/data/cat/0.png", max_bytes=2)

    results = storage.read_many([f"{root}/data/dog/1.png", f"{root}/data/gone.png", f"{root}/data/cat/0.png"])
    assert results[0] == b"dog" and results[2] == b"cat"
    assert isinstance(results[1], SourceNotFoundError) and f"{root}/data/gone.png" in str(results[1])


def test_s3_missing_key_and_bucket_name_the_uri(s3_bucket: str) -> None:
    with pytest.raises(SourceNotFoundError) as caught:
        storage.read_bytes(f"s3://{s3_bucket}/no/such/key.png")
    assert f"s3://{s3_bucket}/no/such/key.png: not found" in str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    with pytest.raises(SourceNotFoundError, match="s3://no-such-bucket-here/x.png: not found"):
        storage.read_bytes("s3://no-such-bucket-here/x.png")
    with pytest.raises(SourceNotFoundError, match="bucket does not exist"):
        storage.list_files("s3://no-such-bucket-here/data/")


def test_s3_model_round_trip_writes_model_json_last(
    s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = {"model.json": b'{"id": 1}', "head.npy": b"\x93NUMPY...", "metrics/valid.json": b"{}", "run.json": b"{}"}
    write_tree(tmp_path / "model", model)
    uri = f"s3://{s3_bucket}/models/m1"
    written = storage.upload_tree(tmp_path / "model", uri)
    assert written[-1] == f"{uri}/model.json"
    assert storage.list_files(uri) == sorted(f"{uri}/{name}" for name in model)

    order: list[str] = []
    real_write = storage.write_bytes
    monkeypatch.setattr(storage, "write_bytes", lambda target, data: (order.append(target), real_write(target, data)))
    copy = storage.download_tree(f"{uri}/", tmp_path / "copy")
    assert Path(order[-1]).name == "model.json" and len(order) == len(model)
    assert {p.relative_to(copy).as_posix(): p.read_bytes() for p in copy.rglob("*") if p.is_file()} == model


def test_s3_access_denied(s3_server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """moto with authentication on: a key it does not know, and a user whose IAM policy allows listing only."""
    uri = f"s3://{s3_bucket}/data/cat/0.png"
    storage.write_bytes(uri, b"cat")
    reader = s3_server.create_user(f"reader-{s3_bucket}", ["s3:ListBucket", "s3:GetObject"], s3_bucket)
    lister = s3_server.create_user(f"lister-{s3_bucket}", ["s3:ListBucket"], s3_bucket)

    def use(key: tuple[str, str]) -> None:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key[0])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key[1])

    with s3_server.authentication():
        use(reader)  # authentication is on, and a user with the permission gets through
        assert storage.read_bytes(uri) == b"cat"

        use(lister)  # the listing is allowed, the object is not
        assert storage.list_files(f"s3://{s3_bucket}/data/") == [uri]
        with pytest.raises(AccessDeniedError) as caught:
            storage.read_bytes(uri)
        assert f"cannot read {uri}: access denied" in str(caught.value)
        assert caught.value.code == "access_denied" and isinstance(caught.value, FetchError)
        with pytest.raises(AccessDeniedError, match=f"cannot write s3://{s3_bucket}/data/new.png"):
            storage.write_bytes(f"s3://{s3_bucket}/data/new.png", b"x")

        use(("AKIAUNKNOWNUNKNOWN00", "wrong-secret"))  # credentials the server refuses
        with pytest.raises(AccessDeniedError, match="Access Key Id you provided does not exist"):
            storage.list_files(f"s3://{s3_bucket}/data/")
        with pytest.raises(AccessDeniedError, match=f"cannot read {uri}: access denied"):
            storage.read_bytes(uri)


# --- data sets and predict arguments from s3:// -------------------------------------------------------


def test_load_dataset_from_an_s3_prefix_matches_the_local_folder(s3_bucket: str, tmp_path: Path) -> None:
    files = labelled_tree()
    write_tree(tmp_path / "data", files)
    storage.upload_tree(tmp_path / "data", f"s3://{s3_bucket}/data", last=None)

    with load_dataset(tmp_path / "data") as local, load_dataset(f"s3://{s3_bucket}/data/") as remote:
        assert remote.labels == local.labels == ("cat", "dog")
        assert manifest_rows(remote.records) == manifest_rows(local.records)
        assert [r.source for r in remote.records] == ["cat/0.png", "cat/1.png", "dog/0.png", "dog/sub/1.png"]
        assert [(b.source, b.code) for b in remote.skipped] == [(b.source, b.code) for b in local.skipped]
        assert all(r.path.read_bytes() == files[r.source] for r in remote.records)
        temp_dirs = list(remote.temp_dirs)
    assert temp_dirs and not any(folder.exists() for folder in temp_dirs)

    storage.write_bytes(f"s3://{s3_bucket}/split/train/cat/a.png", files["cat/0.png"])
    storage.write_bytes(f"s3://{s3_bucket}/split/train/dog/b.png", files["dog/0.png"])
    storage.write_bytes(f"s3://{s3_bucket}/split/valid/dog/c.png", files["dog/sub/1.png"])
    with load_dataset(f"s3://{s3_bucket}/split") as split:
        assert [(r.source, r.split) for r in split.records] == [
            ("train/cat/a.png", "train"), ("train/dog/b.png", "train"), ("valid/dog/c.png", "valid"),
        ]

    with pytest.raises(DataError, match=f"s3://{s3_bucket}/nothing: cannot tell what the URL holds"):
        load_dataset(f"s3://{s3_bucket}/nothing")


def test_load_dataset_from_csvs_of_s3_rows(s3_bucket: str, tmp_path: Path) -> None:
    files = {"cat/0.png": png(), "cat/1.png": png(), "dog/0.png": png(), "dog/1.png": png()}
    write_tree(tmp_path / "data", files)
    storage.upload_tree(tmp_path / "data", f"s3://{s3_bucket}/data", last=None)
    local_rows = manifest_rows(load_dataset(tmp_path / "data").records)

    # a local CSV of s3:// rows
    lines = [f"s3://{s3_bucket}/data/{name},{name.split('/')[0]}" for name in files]
    (tmp_path / "m.csv").write_text("image,label\n" + "\n".join(lines) + "\n")
    with load_dataset(tmp_path / "m.csv") as dataset:
        assert manifest_rows(dataset.records) == local_rows
        assert [r.source for r in dataset.records] == [f"s3://{s3_bucket}/data/{name}" for name in files]

    # a CSV on s3 whose rows are relative to it
    relative = [f"../data/{name},{name.split('/')[0]}" for name in files]
    storage.write_bytes(f"s3://{s3_bucket}/lists/m.csv", "\n".join(relative).encode())
    with load_dataset(f"s3://{s3_bucket}/lists/m.csv") as dataset:
        assert manifest_rows(dataset.records) == local_rows

    # a remote CSV cannot name local files: a file:// row is refused, a path is a name in the bucket
    local = tmp_path / "data" / "cat" / "0.png"
    storage.write_bytes(f"s3://{s3_bucket}/lists/evil.csv", f"{local.as_uri()},cat\n../data/dog/0.png,dog\n".encode())
    with pytest.raises(DataError, match="evil.csv line 1: .*may only list http"):
        load_dataset(f"s3://{s3_bucket}/lists/evil.csv")
    storage.write_bytes(f"s3://{s3_bucket}/lists/evil.csv", f"{local},cat\n../data/dog/0.png,dog\n".encode())
    with pytest.raises(SourceNotFoundError, match=f"evil.csv line 1: s3://{s3_bucket}{local}: not found"):
        load_dataset(f"s3://{s3_bucket}/lists/evil.csv")

    # urls_only (the service's switch for a CSV it received): http(s) rows only; the server's own
    # bucket credentials must not be reachable through a manifest someone sent it
    (tmp_path / "received.csv").write_text("\n".join(relative) + "\n")
    with pytest.raises(DataError, match="upload line 1: ../data/cat/0.png: this manifest may only list http"):
        load_dataset(tmp_path / "received.csv", urls_only="upload")
    with pytest.raises(DataError, match="m.csv line 1: ../data/cat/0.png: this manifest may only list http"):
        load_dataset(tmp_path / "received.csv", urls_only=f"s3://{s3_bucket}/lists/m.csv")
    with pytest.raises(DataError, match=r"upload line 2: s3://.*may only list http\(s\) URLs, not s3://"):
        load_dataset(tmp_path / "m.csv", urls_only="upload")

    # a missing object names the CSV line and the URI; skip_bad keeps it aside
    (tmp_path / "gone.csv").write_text(f"{lines[0]}\ns3://{s3_bucket}/data/cat/gone.png,cat\n{lines[-1]}\n")
    with pytest.raises(SourceNotFoundError, match=f"gone.csv line 2: s3://{s3_bucket}/data/cat/gone.png: not found"):
        load_dataset(tmp_path / "gone.csv")
    dataset = load_dataset(tmp_path / "gone.csv", skip_bad=True)
    assert [(b.source, b.code) for b in dataset.skipped] == [(f"s3://{s3_bucket}/data/cat/gone.png", "not_found")]
    dataset.close()


def test_load_dataset_from_an_s3_archive(s3_bucket: str, tmp_path: Path) -> None:
    files = {"cat/0.png": png(), "dog/0.png": png()}
    write_tree(tmp_path / "src", files)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(tmp_path / "src", arcname="wrap")
    storage.write_bytes(f"s3://{s3_bucket}/d.tar.gz", buffer.getvalue())
    with load_dataset(f"s3://{s3_bucket}/d.tar.gz") as dataset:
        assert [r.source for r in dataset.records] == ["cat/0.png", "dog/0.png"]
        assert [r.sha256 for r in dataset.records] == [sha256(files["cat/0.png"]), sha256(files["dog/0.png"])]


def test_predict_arguments_and_images_from_s3(s3_bucket: str, tmp_path: Path) -> None:
    files = labelled_tree()
    write_tree(tmp_path / "data", files)
    storage.upload_tree(tmp_path / "data", f"s3://{s3_bucket}/photos", last=None)
    root = f"s3://{s3_bucket}/photos"
    assert expand_image_args([f"{root}/", f"{root}/cat/0.png", f"{root}/no-such.png"]) == [
        f"{root}/cat/0.png", f"{root}/cat/1.png", f"{root}/dog/0.png", f"{root}/dog/sub/1.png",
        f"{root}/cat/0.png", f"{root}/no-such.png",  # image names are kept as they are, read later
    ]
    storage.write_bytes(f"{root}/notes/readme.txt", b"x")
    with pytest.raises(SourceNotFoundError, match=f"{root}/notes/: no image files"):
        expand_image_args([f"{root}/notes/"])
    with pytest.raises(UnsupportedSchemeError, match="unsupported URL scheme 'ftp'"):
        expand_image_args(["ftp://example.com/photos/"])
    assert read_image_source(f"{root}/dog/sub/1.png") == files["dog/sub/1.png"]
