"""Turn what the user points at (DATA) into a :class:`~photolabel.dataset.Dataset`.

DATA may be a folder with one sub-folder per label, a folder with ``train/`` and
optional ``valid/`` (or ``validation/``) and ``test/`` sub-folders, an archive of either
(``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``), or a CSV manifest of ``image,label[,sha1]``
rows whose images are paths or URIs. Any of these may be behind a URI that
:mod:`photolabel.storage` reads: a folder as a prefix (``s3://bucket/data/``), an archive
or a CSV as an object or an http(s) URL (downloaded into the data set's temporary
folder). In a CSV that came from a remote URI every image is a remote URI (relative
ones resolve against the CSV's), so a remote manifest cannot make us read local files.

Images are hashed here, not decoded: the embedding step finds undecodable images.
"""

from __future__ import annotations

import codecs
import csv
import glob
import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from photolabel import storage
from photolabel.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive
from photolabel.dataset import BadInput, Dataset, Duplicate, ImageRecord
from photolabel.errors import (
    CsvLimitError,
    CsvTooLargeError,
    DataError,
    FetchTooLargeError,
    HashMismatchError,
    PhotolabelError,
    SourceNotFoundError,
    UnsupportedSchemeError,
)
from photolabel.fetch import DEFAULT_FETCH_OPTIONS, FetchOptions
from photolabel.hashing import sha1_bytes, sha256_bytes
from photolabel.limits import DEFAULT_ARCHIVE_LIMITS, DEFAULT_CSV_LIMITS, ArchiveLimits, CsvLimits

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})

# top-level folder name -> split of its records, in the split layout
_SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid"}
_IGNORED_FOLDERS = {"test"}
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_WEB_SCHEMES = ("http", "https")
_GLOB_MAGIC = re.compile(r"[*?[]")
_CSV_COLUMNS = ("image", "label", "sha1")
_CSV_LINE_CAP = 1024**2  # bytes of one physical line read at a time; a longer line is refused


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
    fetch_options: FetchOptions = DEFAULT_FETCH_OPTIONS,
    progress: bool = False,
    require_labels: bool = True,
    urls_only: str | None = None,
    archive_limits: ArchiveLimits | None = None,
    csv_limits: CsvLimits | None = None,
) -> Dataset:
    """Load the labelled images that ``spec`` (a path or any URI :mod:`photolabel.storage` reads) names.

    ``urls_only`` (a service's safety switch) names where an untrusted local CSV came
    from (its URL, or a label such as "upload"): its rows may then only be http(s) URLs
    (relative ones resolve against it when it is one), fetched with ``fetch_options``
    (whose private-address guard applies): never local paths, file:// URLs, or storage
    buckets (s3://, gs://, ...) that the server's own credentials could reach.

    ``classes`` fixes the label order; an image with any other label, or (when
    ``require_labels``) a class with no image, is a :class:`DataError`. Without it the
    labels are sorted by name. ``skip_bad`` turns per-image problems (missing file,
    sha1 mismatch, unreachable URL) into :attr:`Dataset.skipped` entries instead of
    errors. ``require_labels=False`` (incremental training) accepts a single label,
    classes without images, and valid-only labels.

    ``archive_limits`` caps an archive (members, bytes, compression ratio, time; see
    :func:`photolabel.archives.extract_archive`), ``csv_limits`` a CSV manifest (rows, bytes in
    a cell); both default to :mod:`photolabel.limits`' defaults.

    Identical bytes listed twice with the same label are kept once; with different
    labels they are a :class:`DataError`. Temporary folders (extracted archives,
    downloads) belong to the returned dataset and go on its ``close()``; if loading
    fails they are removed before the error propagates.

    Raises :class:`SourceNotFoundError`, :class:`DataError` (and its
    :class:`HashMismatchError`, :class:`~photolabel.errors.UnsafeArchiveError`,
    :class:`~photolabel.errors.ArchiveTooLargeError`, :class:`~photolabel.errors.CsvLimitError`), or
    :class:`~photolabel.errors.FetchError` (and its
    :class:`~photolabel.errors.AccessDeniedError`), or
    :class:`~photolabel.errors.MissingDependencyError`, each with a one-line message
    naming the file, URI or CSV line.
    """
    wanted = _check_classes(classes)
    loader = _Loader(wanted, skip_bad, fetch_options, progress, archive_limits=archive_limits or DEFAULT_ARCHIVE_LIMITS,
                     csv_limits=csv_limits or DEFAULT_CSV_LIMITS)
    shown = os.fspath(spec)
    try:
        if urls_only is not None:
            if Path(shown).suffix.lower() != ".csv" or not Path(shown).is_file():
                raise DataError(f"{urls_only}: expected a CSV manifest")
            base = urls_only if storage.scheme_of(urls_only) in _WEB_SCHEMES else ""
            loader.web_only = True
            _load_csv(loader, Path(shown), shown=urls_only, base_url=base)
        else:
            _load_spec(loader, shown)
        return _assemble(loader, shown, require_labels)
    except BaseException:
        for folder in loader.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def check_manifest(
    path: str | os.PathLike[str],
    *,
    urls_only: str,
    classes: Sequence[str] | None = None,
    csv_limits: CsvLimits | None = None,
    shown: str | None = None,
) -> int:
    """Check an untrusted CSV manifest as ``load_dataset(path, urls_only=...)`` will read it, fetching nothing.

    A service calls it when it receives a manifest, so that an empty one, a header without
    rows, a malformed row, a row that is not an http(s) URL, or one over ``csv_limits`` is
    refused at once rather than failing a job later. Messages name the file ``shown`` (default
    ``urls_only``). Returns the number of rows. Raises :class:`DataError`
    (:class:`~photolabel.errors.CsvLimitError` for a limit) naming the line.
    """
    loader = _Loader(_check_classes(classes), False, DEFAULT_FETCH_OPTIONS, False, web_only=True,
                     csv_limits=csv_limits or DEFAULT_CSV_LIMITS)
    csv_path = Path(path)
    name = shown or urls_only
    rows = _read_csv_rows(loader, csv_path, name)
    base = urls_only if storage.scheme_of(urls_only) in _WEB_SCHEMES else ""
    for row in rows:
        _row_target(row, csv_path, name, base, web_only=True)
    return len(rows)


def expand_image_args(args: Sequence[str]) -> list[str]:
    """Expand the IMAGE arguments of ``photolabel predict``.

    Each argument is a file (kept as is), a folder (its image files, recursively,
    sorted, hidden ones left out), a glob pattern (its matches, sorted; folders among
    them are expanded like folders), or a URI: one whose name is an image file is kept
    as is (read later), a folder or prefix (``s3://bucket/photos/``) is expanded to the
    URIs of its image files. Raises :class:`SourceNotFoundError` for a missing file, a
    folder without images or a pattern that matches nothing, and
    :class:`~photolabel.errors.UnsupportedSchemeError` for a URI scheme no back-end serves.
    """
    expanded: list[str] = []
    for arg in args:
        if storage.scheme_of(arg):
            expanded.extend(_expand_uri(arg))
        elif os.path.isfile(arg):
            expanded.append(arg)
        elif os.path.isdir(arg):
            files = _image_files(Path(arg))
            if not files:
                raise SourceNotFoundError(f"{arg}: no image files in this folder")
            expanded.extend(str(file) for file in files)
        elif _GLOB_MAGIC.search(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise SourceNotFoundError(f"{arg}: no file matches this pattern")
            for match in matches:
                if os.path.isdir(match):
                    expanded.extend(str(file) for file in _image_files(Path(match)))
                else:
                    expanded.append(match)
        else:
            raise SourceNotFoundError(f"{arg}: no such file or folder")
    return expanded


def _expand_uri(uri: str) -> list[str]:
    storage.check_uri(uri)
    # an image name is taken as a file without asking the store (one request less per image)
    if _is_image_name(storage.basename(uri)) or not storage.is_dir(uri):
        return [uri]
    files = [file_uri for name, file_uri in storage.list_tree(uri) if _is_visible_image(name)]
    if not files:
        raise SourceNotFoundError(f"{uri}: no image files under it")
    return files


def read_image_source(item: str, fetch_options: FetchOptions = DEFAULT_FETCH_OPTIONS) -> bytes:
    """The bytes of a local path or of any URI :mod:`photolabel.storage` reads.

    Raises :class:`SourceNotFoundError` for a missing file or object,
    :class:`~photolabel.errors.FetchError` for an unreachable URI, a refused one or an
    unsupported scheme, :class:`DataError` for a folder or an unreadable file.
    """
    return storage.read_bytes(item, fetch_options)


# --- loading -----------------------------------------------------------------------------


@dataclass
class _Found:
    record: ImageRecord
    where: str  # how messages name it: "DATA/blouse/1.jpg", "blouse/1.jpg in a.zip", "m.csv line 3"


@dataclass
class _Loader:
    classes: tuple[str, ...] | None
    skip_bad: bool
    fetch_options: FetchOptions
    progress: bool
    web_only: bool = False  # rows may only be http(s) URLs (an untrusted manifest: urls_only)
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
    csv_limits: CsvLimits = DEFAULT_CSV_LIMITS
    found: list[_Found] = field(default_factory=list)
    skipped: list[BadInput] = field(default_factory=list)
    temp_dirs: list[Path] = field(default_factory=list)

    def make_temp_dir(self) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="photolabel-"))
        self.temp_dirs.append(folder)
        return folder

    def bad(self, source: str, error: PhotolabelError) -> None:
        """A per-image problem: raised, or kept in ``skipped`` when ``skip_bad`` is on."""
        if not self.skip_bad:
            raise error
        self.skipped.append(BadInput(source, str(error), error.code))

    def check_label(self, label: str, where: str) -> None:
        if self.classes is not None and label not in self.classes:
            allowed = ", ".join(f"'{name}'" for name in self.classes)
            raise DataError(f"{where}: label '{label}' is not one of the classes {allowed}")

    def add(self, source: str, path: Path, sha256: str, label: str, split: str, where: str) -> None:
        record = ImageRecord(source=source, path=path, sha256=sha256, label=label, split=split)
        self.found.append(_Found(record, where))


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if isinstance(classes, str):
        raise TypeError("classes must be a sequence of label names, not one string")
    if classes is None or len(classes) == 0:
        return None
    seen: set[str] = set()
    for name in classes:
        if not name or not name.strip():
            raise DataError("classes: an empty class name was given")
        if name in seen:
            raise DataError(f"classes: '{name}' is listed twice")
        seen.add(name)
    return tuple(classes)


def _load_spec(loader: _Loader, spec: str) -> None:
    if not storage.is_local(spec):
        _load_remote(loader, spec)
        return
    path = storage.local_path(spec)
    if not path.exists():
        raise SourceNotFoundError(f"{spec}: no such file or folder")
    if path.is_dir():
        _load_folder(loader, path, shown=spec, in_archive=False)
    elif is_archive(path):
        _load_archive(loader, path, shown=spec)
    elif path.suffix.lower() == ".csv":
        _load_csv(loader, path, shown=spec, base_url=None)
    else:
        raise DataError(
            f"{spec}: not a folder, an archive ({', '.join(ARCHIVE_SUFFIXES)}) or a .csv manifest"
        )


def _load_remote(loader: _Loader, uri: str) -> None:
    name = storage.basename(uri)
    if is_archive(name) or name.lower().endswith(".csv"):
        local = loader.make_temp_dir() / name
        try:
            body = storage.read_bytes(uri, loader.fetch_options)
        except FetchTooLargeError as exc:
            if is_archive(name):
                raise
            raise CsvTooLargeError(str(exc)) from exc
        local.write_bytes(body)
        if is_archive(name):
            _load_archive(loader, local, shown=uri)
        else:
            _load_csv(loader, local, shown=uri, base_url=uri)
    elif storage.is_dir(uri):
        _load_remote_folder(loader, uri)
    else:
        raise DataError(
            f"{uri}: cannot tell what the URL holds; it is not a folder (prefix) with files, "
            f"and its name does not end in .csv or {', '.join(ARCHIVE_SUFFIXES)}"
        )


def _load_remote_folder(loader: _Loader, uri: str) -> None:
    """A folder layout under a prefix: mirrored into a temporary folder, then read as a local one.

    Image files in sub-folders are downloaded; other visible files are mirrored empty,
    since only their presence matters (a folder of other files is not a label).
    """
    root = loader.make_temp_dir()
    images: list[tuple[str, Path, str]] = []  # (name, local copy, URI)
    for name, file_uri in storage.list_tree(uri):
        if not _is_visible(name):
            continue
        target = root / name
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if "/" in name and _is_image_name(PurePosixPath(name).name):
                images.append((name, target, file_uri))
            else:
                target.touch()
        except OSError as exc:
            raise DataError(f"{file_uri}: cannot be mirrored as a file ({exc.strerror or exc})") from exc
    failures: dict[int, PhotolabelError] = {}
    bodies = storage.read_each([file_uri for _, _, file_uri in images], loader.fetch_options, progress=loader.progress)
    for index, body in bodies:
        if isinstance(body, PhotolabelError):
            failures[index] = body
        else:
            images[index][1].write_bytes(body)
    for index in sorted(failures):  # in name order, whatever order the downloads ended in
        loader.bad(images[index][0], failures[index])
    _load_folder(loader, root, shown=uri, in_archive=False)


def _load_archive(loader: _Loader, archive: Path, shown: str) -> None:
    folder = loader.make_temp_dir()
    try:
        root = extract_archive(archive, folder, limits=loader.archive_limits)
    except PhotolabelError as exc:
        if shown == str(archive):
            raise
        # name what the user gave (a URL), not the local download
        raise type(exc)(str(exc).replace(str(archive), shown)) from exc
    _load_folder(loader, _archive_data_root(folder, root), shown=shown, in_archive=True)


def _archive_data_root(folder: Path, root: Path) -> Path:
    """Refine the one-wrapping-folder rule for what a data set archive may hold.

    A lone ``train/`` (or valid/test) folder is the split layout, and a lone folder
    with images and no sub-folders is a single label: both are read from the top.
    """
    if root == folder:
        return folder
    if root.name in _SPLIT_FOLDERS or root.name in _IGNORED_FOLDERS:
        return folder
    if not _visible_subdirs(root):
        return folder
    return root


def _visible_subdirs(folder: Path) -> list[Path]:
    return sorted(
        entry
        for entry in folder.iterdir()
        if entry.is_dir() and not entry.name.startswith(".") and entry.name != "__MACOSX"
    )


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, hidden ones left out, in a fixed order."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            if _is_image_name(name):
                files.append(Path(dirpath, name))
    return files


def _is_image_name(name: str) -> bool:
    """A visible file name with an image suffix (any case)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _is_visible(relative: str) -> bool:
    """No part of the "/"-separated name is hidden."""
    return not any(part.startswith(".") for part in relative.split("/"))


def _is_visible_image(relative: str) -> bool:
    return _is_visible(relative) and _is_image_name(PurePosixPath(relative).name)


def _has_visible_files(folder: Path) -> bool:
    for _, dirnames, filenames in os.walk(folder):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        if any(not name.startswith(".") for name in filenames):
            return True
    return False


def _load_folder(loader: _Loader, root: Path, shown: str, in_archive: bool) -> None:
    subdirs = {entry.name: entry for entry in _visible_subdirs(root)}
    # train/ and/or valid/ (or validation/), besides an ignored test/: the split layout.
    split_layout = bool(set(subdirs) & set(_SPLIT_FOLDERS)) and set(subdirs) <= {*_SPLIT_FOLDERS, *_IGNORED_FOLDERS}
    if not split_layout:
        _load_label_folders(loader, root, root, "auto", shown, in_archive)
        return
    if "valid" in subdirs and "validation" in subdirs:
        raise DataError(f"{shown}: has both valid/ and validation/; keep one of them")
    for name, split in _SPLIT_FOLDERS.items():
        if name in subdirs:
            _load_label_folders(loader, subdirs[name], root, split, shown, in_archive)


def _load_label_folders(
    loader: _Loader, parent: Path, root: Path, split: str, shown: str, in_archive: bool
) -> None:
    def where(relative: str) -> str:
        return f"{relative} in {shown}" if in_archive else f"{shown.rstrip('/')}/{relative}"

    label_dirs = _visible_subdirs(parent)
    if not label_dirs and split != "valid":
        inside = "" if parent == root else f" {parent.relative_to(root).as_posix()}/ of"
        raise DataError(f"no label folders in{inside} {shown}: expected one sub-folder of images per label")
    for label_dir in label_dirs:
        label = label_dir.name
        relative_dir = label_dir.relative_to(root).as_posix() + "/"
        files = _image_files(label_dir)
        if not files:
            if _has_visible_files(label_dir):
                # e.g. a docs/ or requests/ folder beside the label folders: not a label
                loader.skipped.append(
                    BadInput(relative_dir, "no image files; not used as a label", "not_a_label")
                )
                continue
            raise DataError(f"{where(relative_dir)}: label '{label}' has no images")
        loader.check_label(label, where(relative_dir))
        for file in files:
            source = file.relative_to(root).as_posix()
            try:
                data = storage.read_local(file, shown=where(source))
            except PhotolabelError as exc:
                loader.bad(source, exc)
                continue
            loader.add(source, file.absolute(), sha256_bytes(data), label, split, where(source))


@dataclass(frozen=True)
class _Row:
    line: int
    image: str
    label: str
    sha1: str | None


def _load_csv(loader: _Loader, csv_path: Path, shown: str, base_url: str | None) -> None:
    rows = _read_csv_rows(loader, csv_path, shown)
    # Each row's image: a URI to download, or a local path.
    targets: list[tuple[str, str]] = []  # ("url", uri) or ("path", path)
    for row in rows:
        targets.append(_row_target(row, csv_path, shown, base_url, loader.web_only))
    urls = sorted({value for kind, value in targets if kind == "url"})
    downloads = _download(loader, urls) if urls else {}

    for row, (kind, value) in zip(rows, targets):
        where = f"{shown} line {row.line}"
        if kind == "url":
            result = downloads[value]
            if isinstance(result, PhotolabelError):
                loader.bad(row.image, type(result)(f"{where}: {result}"))
                continue
            path, sha1, sha256 = result
        else:
            try:
                data = storage.read_local(Path(value), shown=f"{where}: image {row.image}")
            except PhotolabelError as exc:
                loader.bad(row.image, exc)
                continue
            path, sha1, sha256 = Path(value), sha1_bytes(data), sha256_bytes(data)
        if row.sha1 is not None and sha1 != row.sha1:
            loader.bad(
                row.image,
                HashMismatchError(f"{where}: {row.image} has sha1 {sha1}, expected {row.sha1}"),
            )
            continue
        loader.add(row.image, path, sha256, row.label, "auto", f"{where} ({row.image})")


def _read_csv_rows(loader: _Loader, csv_path: Path, shown: str) -> list[_Row]:
    """The manifest's rows, read as a stream: a huge file is refused at the limit, never read whole."""
    limits = loader.csv_limits
    rows: list[_Row] = []
    header_line: int | None = None
    try:
        with open(csv_path, "rb") as handle:
            reader = csv.reader(_csv_lines(handle, shown))
            first = True
            try:
                for raw in reader:
                    cells = [cell.strip() for cell in raw]
                    if not any(cells):
                        continue
                    line = reader.line_num
                    _check_cells(raw, line, shown, limits)
                    if first:
                        first = False
                        if len(cells) >= 2 and cells[1].lower() == "label":
                            header_line = line
                            continue
                    if len(rows) == limits.max_rows:
                        raise CsvLimitError(f"{shown} line {line}: more rows than the limit of {limits.max_rows}; "
                                            "split the manifest")
                    rows.append(_parse_row(cells, line, shown))
                    loader.check_label(rows[-1].label, f"{shown} line {line}")
            except csv.Error as exc:
                line = reader.line_num
                if "field larger than field limit" in str(exc):
                    raise CsvLimitError(f"{shown} line {line}: a cell holds more than {limits.max_field_bytes} "
                                        "bytes, the limit") from None
                raise DataError(f"{shown} line {line}: {exc}") from None
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror or exc})") from exc
    if not rows:
        if header_line is not None:
            raise DataError(f"{shown}: no rows after the header on line {header_line}; "
                            "expected lines of image,label[,sha1]")
        raise DataError(f"{shown}: no rows; expected lines of image,label[,sha1]")
    return rows


def _csv_lines(handle: IO[bytes], shown: str) -> Iterator[str]:
    """The file's lines as text, split as ``open(newline="")`` splits them (on \\n, \\r\\n or \\r).

    Read one line at a time, at most :data:`_CSV_LINE_CAP` bytes, so that memory stays bounded;
    a line that is not UTF-8 is named by its number.
    """
    number = 0
    while raw := handle.readline(_CSV_LINE_CAP + 1):
        if len(raw) > _CSV_LINE_CAP:
            raise CsvLimitError(f"{shown} line {number + 1}: longer than {_CSV_LINE_CAP} bytes; refused")
        if number == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8):]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{shown} line {number + 1}: not UTF-8 text ({exc.reason} at byte {exc.start} "
                            "of the line)") from None
        for line in io.StringIO(text, newline=""):  # a lone \r ends a line too
            number += 1
            yield line


def _check_cells(raw: list[str], line: int, shown: str, limits: CsvLimits) -> None:
    for index, cell in enumerate(raw):
        if len(cell) > limits.max_field_bytes // 4 and len(cell.encode("utf-8")) > limits.max_field_bytes:
            name = f"{_CSV_COLUMNS[index]} cell" if index < len(_CSV_COLUMNS) else f"cell {index + 1}"
            raise CsvLimitError(f"{shown} line {line}: the {name} holds {len(cell.encode('utf-8'))} bytes, "
                                f"over the limit of {limits.max_field_bytes}")


def _parse_row(cells: list[str], line: int, shown: str) -> _Row:
    where = f"{shown} line {line}"
    if len(cells) < 2:
        raise DataError(f"{where}: expected image,label[,sha1], got {','.join(cells)!r}")
    if any(cells[3:]):
        raise DataError(f"{where}: expected image,label[,sha1], got {len(cells)} cells")
    image, label = cells[0], cells[1]
    if not image:
        raise DataError(f"{where}: the image cell is empty")
    if not label:
        raise DataError(f"{where}: the label cell is empty for {image}")
    sha1 = cells[2].lower() if len(cells) > 2 and cells[2] else None
    if sha1 is not None and not _SHA1.match(sha1):
        raise DataError(f"{where}: {cells[2]!r} is not a sha1 (40 hex digits)")
    return _Row(line, image, label, sha1)


def _row_target(row: _Row, csv_path: Path, shown: str, base_url: str | None,
                web_only: bool = False) -> tuple[str, str]:
    """("url", URI) for an image to download, ("path", absolute path) for a local one.

    ``base_url`` None: a local CSV, whose rows may be anything; otherwise the rows may
    only be remote URIs, or (when ``base_url`` is not "") names relative to it.
    ``web_only``: only http(s) URLs (an untrusted manifest sent to the service).
    """
    where = f"{shown} line {row.line}"
    try:
        storage.check_uri(row.image)
    except UnsupportedSchemeError as exc:
        raise DataError(f"{where}: {exc}") from exc
    scheme = storage.scheme_of(row.image)
    if web_only and scheme and scheme not in _WEB_SCHEMES:
        raise DataError(f"{where}: {row.image}: this manifest may only list http(s) URLs, not {scheme}:// "
                        "(a service reads no storage bucket or local file for a manifest it was sent)")
    if storage.is_remote(row.image):
        return "url", row.image
    if base_url is not None:
        if storage.scheme_of(row.image):
            raise DataError(
                f"{where}: {row.image}: a CSV fetched from a URL may only list http(s) or other remote URLs "
                "(s3://, gs://, ...), not local paths or file://"
            )
        if not base_url:
            raise DataError(f"{where}: {row.image}: this manifest may only list http(s) URLs, not paths")
        return "url", storage.resolve(base_url, row.image)
    if not storage.is_local(row.image):
        return "url", row.image  # an in-process store such as memory://
    path = storage.local_path(row.image)
    return "path", str((path if path.is_absolute() else csv_path.parent / path).absolute())


def _download(loader: _Loader, uris: list[str]) -> dict[str, tuple[Path, str, str] | PhotolabelError]:
    """Download ``uris`` into a temp folder; per URI: (file, sha1, sha256) or the error."""
    folder = loader.make_temp_dir()
    results: dict[str, tuple[Path, str, str] | PhotolabelError] = {}
    for index, body in storage.read_each(uris, loader.fetch_options, progress=loader.progress):
        if isinstance(body, PhotolabelError):
            results[uris[index]] = body
            continue
        sha256 = sha256_bytes(body)
        path = folder / sha256
        path.write_bytes(body)
        results[uris[index]] = (path, sha1_bytes(body), sha256)
    return results


def _assemble(loader: _Loader, shown: str, require_labels: bool) -> Dataset:
    records: list[ImageRecord] = []
    first_of: dict[str, _Found] = {}
    duplicates: list[Duplicate] = []
    for found in loader.found:
        earlier = first_of.get(found.record.sha256)
        if earlier is None:
            first_of[found.record.sha256] = found
            records.append(found.record)
        elif earlier.record.label != found.record.label:
            raise DataError(
                f"the same image is labelled '{earlier.record.label}' at {earlier.where} "
                f"and '{found.record.label}' at {found.where}"
            )
        else:  # the same bytes, the same label: kept once, and reported
            duplicates.append(Duplicate(found.record.sha256, found.record.label, earlier.record.source,
                                        found.record.source))
    if not records:
        note = f" ({len(loader.skipped)} inputs skipped)" if loader.skipped else ""
        raise DataError(f"{shown}: no images found{note}")

    present = sorted({record.label for record in records})
    if loader.classes is not None:
        labels = loader.classes
        missing = [name for name in labels if name not in present]
        if missing and require_labels:
            raise DataError(f"{shown}: class '{missing[0]}' has no images")
    else:
        labels = tuple(present)
    if require_labels:
        if len(labels) < 2:
            raise DataError(f"{shown}: needs at least two labels, found only '{labels[0]}'")
        trained = {record.label for record in records if record.split == "train"}
        if trained:
            for label in labels:
                if label not in trained:
                    raise DataError(f"{shown}: label '{label}' has images in valid/ but none in train/")
    return Dataset(records=records, labels=labels, skipped=loader.skipped, temp_dirs=loader.temp_dirs,
                   duplicates=duplicates)


def load_pairs(
    items: Sequence[tuple[str, str, str | bytes, str]],
    *,
    shown: str = "the given images",
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
    fetch_options: FetchOptions = DEFAULT_FETCH_OPTIONS,
    progress: bool = False,
    require_labels: bool = True,
) -> Dataset:
    """A :class:`Dataset` of labelled images given in memory, checked as :func:`load_dataset` checks a CSV.

    Each item is ``(where, source, image, label)``: ``where`` names it in messages ("item 3"),
    ``source`` is its name in the data set, ``image`` is a local path or a URI (read through
    :mod:`photolabel.storage`, downloads into a temporary folder) or encoded image bytes (written to
    a temporary folder, named by their sha256). Paths are read in place, so the records, and the model,
    are the ones the same files give in a folder. Temporary folders go on the dataset's ``close()``.
    """
    loader = _Loader(_check_classes(classes), skip_bad, fetch_options, progress)
    try:
        if not items:
            raise DataError(f"{shown}: no images given")
        uris: set[str] = set()
        for where, _, image, _ in items:
            if isinstance(image, str):
                try:
                    storage.check_uri(image)
                except UnsupportedSchemeError as exc:
                    raise DataError(f"{where}: {exc}") from exc
                if not storage.is_local(image):
                    uris.add(image)
        downloads = _download(loader, sorted(uris)) if uris else {}
        folder: Path | None = None
        for where, source, image, label in items:
            loader.check_label(label, where)
            if isinstance(image, bytes):
                folder = folder or loader.make_temp_dir()
                sha256 = sha256_bytes(image)
                path = folder / sha256
                if not path.exists():
                    path.write_bytes(image)
                loader.add(source, path, sha256, label, "auto", where)
            elif image in downloads:
                result = downloads[image]
                if isinstance(result, PhotolabelError):
                    loader.bad(source, type(result)(f"{where}: {result}"))
                    continue
                loader.add(source, result[0], result[2], label, "auto", f"{where} ({source})")
            else:
                path = storage.local_path(image).absolute()
                try:
                    data = storage.read_local(path, shown=f"{where}: image {image}")
                except PhotolabelError as exc:
                    loader.bad(source, exc)
                    continue
                loader.add(source, path, sha256_bytes(data), label, "auto", f"{where} ({source})")
        return _assemble(loader, shown, require_labels)
    except BaseException:
        for temp in loader.temp_dirs:
            shutil.rmtree(temp, ignore_errors=True)
        raise
