"""The exceptions photolabel raises.

One root, :class:`PhotolabelError`, and a few subclasses that also inherit the
matching builtin so that callers may catch either. Every message names what was
received (the file, the URL, the CSV line) and, where it helps, what to do.
"""

from __future__ import annotations


class PhotolabelError(Exception):
    """Root of every error photolabel raises on purpose.

    The message says what is wrong in words any surface can show. ``remedy`` names a
    remedy the user may have (``"skip_bad"``, ``"out"``, ``"classes"``, ``"head_only"``);
    each adapter words it in its own terms (a CLI flag, a request field) or leaves it out.
    """

    #: short machine-readable code, used by adapters (CLI, HTTP, worker)
    code = "error"
    remedy: str | None = None

    def __init__(self, *args: object, remedy: str | None = None) -> None:
        super().__init__(*args)
        if remedy is not None:
            self.remedy = remedy


class ConfigError(PhotolabelError, ValueError):
    """A setting out of its range or of the wrong type (seed, valid fraction, head parameter).

    ``field`` names the setting, so each adapter can point at its own spelling of it
    (a command-line flag, a form field, a worker option).
    """

    code = "invalid_config"

    def __init__(self, message: str, *, field: str | None = None, remedy: str | None = None) -> None:
        super().__init__(message, remedy=remedy)
        self.field = field


class UnknownNameError(ConfigError):
    """An unknown backbone or head name; the message lists the known ones."""

    code = "unknown_name"


class DataError(PhotolabelError, ValueError):
    """The data set is unusable: empty, one label, unknown label, bad CSV row."""

    code = "bad_data"


class HashMismatchError(DataError):
    """A file's bytes do not match the hash it was announced with."""

    code = "hash_mismatch"


class ImageError(PhotolabelError, ValueError):
    """Bytes that cannot be decoded as an image (or are truncated)."""

    code = "bad_image"


class NotAnImageError(ImageError):
    """Bytes in no image format we read (as opposed to a damaged image)."""

    code = "not_an_image"


class UnsupportedFormatError(NotAnImageError):
    """An image in a format that is recognised but not read (the message lists the formats that are)."""

    code = "unsupported_format"


class ImageTooLargeError(ImageError):
    """An image whose pixel count exceeds the configured cap."""

    code = "image_too_large"


class ImageTooComplexError(ImageTooLargeError):
    """An image with more frames, pages or TIFF directories than the cap, or too many pixels over all of them."""

    code = "image_too_complex"


class SourceNotFoundError(PhotolabelError, FileNotFoundError):
    """A path that does not exist."""

    code = "not_found"


class FetchError(PhotolabelError, OSError):
    """A URL that could not be fetched (unreachable, timeout, HTTP error, too big)."""

    code = "fetch_failed"


class FetchTooLargeError(FetchError):
    """A URL or storage object whose body is over the size cap."""

    code = "download_too_large"


class CsvTooLargeError(FetchTooLargeError):
    """A CSV manifest fetched from a URL or a storage URI that is over the size cap."""

    code = "csv_too_large"


class UrlBlockedError(FetchError):
    """A URL refused by policy before any request: its host resolves to a private, loopback or
    link-local address while those are not allowed."""

    code = "url_blocked"


class UnsafeArchiveError(DataError):
    """An archive member that is a link or escapes the extraction folder."""

    code = "unsafe_archive"


class ArchiveTooLargeError(DataError):
    """An archive with more members, or more bytes once extracted, than the caps allow."""

    code = "archive_too_large"


class CsvLimitError(DataError):
    """A CSV manifest with more rows, or a longer cell, than the caps allow (the message names the line)."""

    code = "csv_over_limit"


class ModelError(PhotolabelError, ValueError):
    """A model directory that is missing, incomplete or fails its hash check.

    ``detail`` is what is wrong, named relative to the model directory (``head/coef.npy: ...``);
    the message adds where the model is. Surfaces that must not show local paths (the service)
    show ``detail`` when it is set.
    """

    code = "bad_model"

    def __init__(self, *args: object, remedy: str | None = None, detail: str | None = None) -> None:
        super().__init__(*args, remedy=remedy)
        self.detail = detail


class ModelIntegrityError(ModelError):
    """A model directory that fails its integrity checks: model.json lists a path outside the
    directory, a listed file is missing or its sha256 differs, or model.json was edited."""

    code = "model_corrupt"


class ExportError(PhotolabelError, ValueError):
    """A model that cannot be exported in the requested form."""

    code = "export_unsupported"


class OutputError(PhotolabelError, OSError):
    """The place the user asked us to write to cannot be written."""

    code = "cannot_write"


class InsufficientStorageError(OutputError):
    """A write failed because the disk (or the quota, or the file size limit) is full;
    what was there before is left as it was."""

    code = "insufficient_storage"


class AccessDeniedError(FetchError):
    """A URI the storage refused us: credentials refused, or no permission for the object."""

    code = "access_denied"


class UnsupportedSchemeError(FetchError):
    """A URI whose scheme has no storage back-end, or an operation its back-end cannot do."""

    code = "unsupported_scheme"


class MissingDependencyError(PhotolabelError, ImportError):
    """A URI scheme whose back-end package is not installed; the message says what to install."""

    code = "missing_dependency"
