"""Turn what the user points at (DATA) into a :class:`~photolabel.dataset.Dataset`.

DATA may be a folder with one sub-folder per label, a folder with ``train/`` and
optional ``valid/`` (or ``validation/``) and ``test/`` sub-folders, an archive of either
(``.tar.gz``, ``.tgz``, ``.tar``, ``.zip``), or a CSV manifest of ``image,label[,sha1]``
rows whose images are paths or URLs. An http(s) URL of a CSV or an archive works too;
in a CSV fetched from a URL every image is a URL (relative ones resolve against the
CSV's URL), so a remote manifest cannot make us read local files.

Images are hashed here, not decoded: the embedding step finds undecodable images.
"""

from __future__ import annotations

import csv
import glob
import io
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from photolabel.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive
from photolabel.dataset import BadInput, Dataset, ImageRecord
from photolabel.errors import (
    DataError,
    FetchError,
    HashMismatchError,
    PhotolabelError,
    SourceNotFoundError,
)
from photolabel.fetch import DEFAULT_FETCH_OPTIONS, FetchOptions, fetch_each, fetch_url
from photolabel.hashing import sha1_bytes, sha256_bytes

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})

# top-level folder name -> split of its records, in the split layout
_SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid"}
_IGNORED_FOLDERS = {"test"}
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
_GLOB_MAGIC = re.compile(r"[*?[]")


def load_dataset(
    spec: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    skip_bad: bool = False,
    fetch_options: FetchOptions = DEFAULT_FETCH_OPTIONS,
    progress: bool = False,
    require_labels: bool = True,
    urls_only: str | None = None,
) -> Dataset:
    """Load the labelled images that ``spec`` names.

    ``urls_only`` (a service's safety switch) names where an untrusted local CSV came
    from (its URL, or a label such as "upload"): its rows may then only be http(s)
    URLs (relative ones resolve against it when it is a URL), never local paths.

    ``classes`` fixes the label order; an image with any other label, or (when
    ``require_labels``) a class with no image, is a :class:`DataError`. Without it the
    labels are sorted by name. ``skip_bad`` turns per-image problems (missing file,
    sha1 mismatch, unreachable URL) into :attr:`Dataset.skipped` entries instead of
    errors. ``require_labels=False`` (incremental training) accepts a single label,
    classes without images, and valid-only labels.

    Identical bytes listed twice with the same label are kept once; with different
    labels they are a :class:`DataError`. Temporary folders (extracted archives,
    downloads) belong to the returned dataset and go on its ``close()``; if loading
    fails they are removed before the error propagates.

    Raises :class:`SourceNotFoundError`, :class:`DataError` (and its
    :class:`HashMismatchError`, :class:`~photolabel.errors.UnsafeArchiveError`), or
    :class:`FetchError`, each with a one-line message naming the file, URL or CSV line.
    """
    wanted = _check_classes(classes)
    loader = _Loader(wanted, skip_bad, fetch_options, progress)
    shown = os.fspath(spec)
    try:
        if urls_only is not None:
            if Path(shown).suffix.lower() != ".csv" or not Path(shown).is_file():
                raise DataError(f"{urls_only}: expected a CSV manifest")
            base = urls_only if _url_scheme(urls_only) in ("http", "https") else ""
            _load_csv(loader, Path(shown), shown=urls_only, base_url=base)
        else:
            _load_spec(loader, shown)
        return _assemble(loader, shown, require_labels)
    except BaseException:
        for folder in loader.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def expand_image_args(args: Sequence[str]) -> list[str]:
    """Expand the IMAGE arguments of ``photolabel predict``.

    Each argument is an http(s):// or file:// URL (kept as is), a file (kept as is), a
    folder (its image files, recursively, sorted, hidden ones left out) or a glob
    pattern (its matches, sorted; folders among them are expanded like folders).
    Raises :class:`SourceNotFoundError` for a missing file, a folder without images or
    a pattern that matches nothing.
    """
    expanded: list[str] = []
    for arg in args:
        if _url_scheme(arg) in ("http", "https", "file") or os.path.isfile(arg):
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


def read_image_source(item: str, fetch_options: FetchOptions = DEFAULT_FETCH_OPTIONS) -> bytes:
    """The bytes of a local path, a file:// URL or an http(s) URL.

    Raises :class:`SourceNotFoundError` for a missing file, :class:`FetchError` for an
    unreachable URL or an unsupported scheme, :class:`DataError` for a folder or an
    unreadable file.
    """
    if _url_scheme(item) in ("http", "https"):
        return fetch_url(item, fetch_options)
    return _read_local(_local_path(item, FetchError, f"cannot fetch {item}"), shown=item)


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
    if _url_scheme(spec) in ("http", "https"):
        _load_remote(loader, spec)
        return
    path = _local_path(spec, DataError, spec)
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


def _load_remote(loader: _Loader, url: str) -> None:
    name = PurePosixPath(urllib.parse.urlsplit(url).path).name
    if not (is_archive(name) or name.lower().endswith(".csv")):
        raise DataError(
            f"{url}: cannot tell what the URL holds; its name must end in .csv or "
            f"{', '.join(ARCHIVE_SUFFIXES)}"
        )
    local = loader.make_temp_dir() / name
    local.write_bytes(fetch_url(url, loader.fetch_options))
    if is_archive(name):
        _load_archive(loader, local, shown=url)
    else:
        _load_csv(loader, local, shown=url, base_url=url)


def _load_archive(loader: _Loader, archive: Path, shown: str) -> None:
    folder = loader.make_temp_dir()
    try:
        root = extract_archive(archive, folder)
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
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                files.append(Path(dirpath, name))
    return files


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
                data = _read_local(file, shown=where(source))
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
    # Each row's image: a URL to download, or a local path.
    targets: list[tuple[str, str]] = []  # ("url", url) or ("path", path)
    for row in rows:
        targets.append(_row_target(row, csv_path, shown, base_url))
    urls = sorted({value for kind, value in targets if kind == "url"})
    downloads = _download(loader, urls) if urls else {}

    for row, (kind, value) in zip(rows, targets):
        where = f"{shown} line {row.line}"
        if kind == "url":
            result = downloads[value]
            if isinstance(result, FetchError):
                loader.bad(row.image, FetchError(f"{where}: {result}"))
                continue
            path, sha1, sha256 = result
        else:
            try:
                data = _read_local(Path(value), shown=f"{where}: image {row.image}")
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
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror})") from exc
    rows: list[_Row] = []
    reader = csv.reader(io.StringIO(text, newline=""))
    first = True
    try:
        for raw in reader:
            cells = [cell.strip() for cell in raw]
            if not any(cells):
                continue
            line = reader.line_num
            if first:
                first = False
                if len(cells) >= 2 and cells[1].lower() == "label":
                    continue
            rows.append(_parse_row(cells, line, shown))
            loader.check_label(rows[-1].label, f"{shown} line {line}")
    except csv.Error as exc:
        raise DataError(f"{shown} line {reader.line_num}: {exc}") from exc
    if not rows:
        raise DataError(f"{shown}: no rows; expected lines of image,label[,sha1]")
    return rows


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


def _row_target(row: _Row, csv_path: Path, shown: str, base_url: str | None) -> tuple[str, str]:
    scheme = _url_scheme(row.image)
    if scheme in ("http", "https"):
        return "url", row.image
    where = f"{shown} line {row.line}"
    if base_url is not None:
        if scheme:
            raise DataError(f"{where}: {row.image}: a CSV fetched from a URL may only list http(s) URLs")
        if not base_url:
            raise DataError(f"{where}: {row.image}: this manifest may only list http(s) URLs, not paths")
        return "url", urllib.parse.urljoin(base_url, row.image)
    if scheme == "file":
        return "path", str(_file_url_path(row.image))
    if scheme:
        raise DataError(f"{where}: {row.image}: unsupported URL scheme '{scheme}' (use http, https or file)")
    path = Path(row.image)
    return "path", str((path if path.is_absolute() else csv_path.parent / path).absolute())


def _download(loader: _Loader, urls: list[str]) -> dict[str, tuple[Path, str, str] | FetchError]:
    """Download ``urls`` into a temp folder; per URL: (file, sha1, sha256) or the error."""
    folder = loader.make_temp_dir()
    results: dict[str, tuple[Path, str, str] | FetchError] = {}
    for index, body in fetch_each(urls, loader.fetch_options, progress=loader.progress):
        if isinstance(body, FetchError):
            results[urls[index]] = body
            continue
        sha256 = sha256_bytes(body)
        path = folder / sha256
        path.write_bytes(body)
        results[urls[index]] = (path, sha1_bytes(body), sha256)
    return results


def _assemble(loader: _Loader, shown: str, require_labels: bool) -> Dataset:
    records: list[ImageRecord] = []
    first_of: dict[str, _Found] = {}
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
    return Dataset(records=records, labels=labels, skipped=loader.skipped, temp_dirs=loader.temp_dirs)


# --- small helpers -----------------------------------------------------------------------


def _local_path(item: str, error: type[PhotolabelError], shown: str) -> Path:
    """A plain path or a ``file://`` URL as a path; any other scheme raises ``error`` naming it."""
    scheme = _url_scheme(item)
    if scheme == "file":
        return _file_url_path(item)
    if scheme:
        raise error(f"{shown}: unsupported URL scheme '{scheme}' (use http, https or file)")
    return Path(item)


def _url_scheme(text: str) -> str | None:
    match = _URL_SCHEME.match(text)
    return match.group(1).lower() if match else None


def _file_url_path(url: str) -> Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DataError(f"{url}: a file:// URL must name a local file (no host)")
    return Path(urllib.request.url2pathname(parts.path))


def _read_local(path: Path, shown: str) -> bytes:
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise SourceNotFoundError(f"{shown}: not found ({path})") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{shown}: is a folder, not an image file") from exc
    except OSError as exc:
        raise DataError(f"{shown}: cannot read ({exc.strerror})") from exc
