"""What users hand us as images, made ready for a model: local paths stay paths, URIs are read.

:meth:`~photolabel.model.Model.predict_batch` reads no network; every adapter that takes image
names (the CLI's ``predict``, the worker) resolves them here, through the URI layer
(:mod:`photolabel.storage`), concurrently and with the runtime's fetch limits, and so do the
Python API's :meth:`~photolabel.model.Model.predict`, ``predict_proba`` and ``embed``.

The Python API's other inputs are sorted out here too: one image or a list (:func:`as_image_list`),
PIL images (:func:`pil_to_pixels`), and labelled images in memory for ``train`` and ``evaluate``
(:func:`labelled_items`, :func:`open_labelled_data`); :data:`IN_MEMORY_RULE` says how an image
without a file gets its sha256.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from photolabel import storage
from photolabel.dataset import BadInput, Dataset
from photolabel.embedding import ImageInput, check_pixels
from photolabel.errors import DataError, ImageError
from photolabel.fetch import DEFAULT_FETCH_OPTIONS, FetchOptions


def read_images(items: Sequence[Any], fetch: FetchOptions = DEFAULT_FETCH_OPTIONS) -> list[Any]:
    """``items`` with every remote URI replaced by an :class:`ImageInput` holding its bytes, or by a
    :class:`BadInput` saying why it could not be read. Everything else is returned as it is."""
    remote = [i for i, item in enumerate(items) if isinstance(item, str) and not storage.is_local(item)]
    if not remote:
        return list(items)
    bodies = storage.read_many([items[i] for i in remote], fetch)
    resolved = list(items)
    for index, body in zip(remote, bodies):
        name = items[index]
        if isinstance(body, Exception):
            code = getattr(body, "code", "fetch_failed")
            resolved[index] = BadInput(name, str(body), code)
        else:
            resolved[index] = ImageInput(source=name, data=body)
    return resolved


# --- what the Python API accepts ---------------------------------------------------------------

#: How an in-memory image gets its sha256 (its identity in the cache, the manifest and the model id).
IN_MEMORY_RULE = (
    "bytes are hashed as given (the same as the file holding them); a numpy array (RGB uint8, H x W x 3) or a "
    "PIL image (EXIF orientation applied, alpha composited on white, converted to RGB as files are) is hashed, "
    "when predicted, over 'HxWx3:' and its pixel bytes, and, when it is a training or evaluation image, "
    "PNG-encoded with Pillow (compress_level 6, no optimize, no metadata) and hashed as those bytes, so the "
    "same pixels always give the same model"
)


def is_pil_image(value: object) -> bool:
    """Whether ``value`` is a PIL image (without importing Pillow for callers that never use it)."""
    module = type(value).__module__
    if not module.startswith("PIL."):
        return False
    from PIL import Image

    return isinstance(value, Image.Image)


def pil_to_pixels(image: Any) -> np.ndarray:
    """A PIL image as the RGB ``uint8`` array (H, W, 3) its file would decode to (EXIF orientation
    applied, transparency composited on white, other modes converted)."""
    from PIL import ImageOps

    from photolabel.images import _to_rgb_array

    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception as exc:  # Pillow raises anything on malformed EXIF
        raise ImageError(f"<PIL image>: its EXIF metadata is malformed ({exc})") from None
    return _to_rgb_array(image)


def encode_png(pixels: np.ndarray) -> bytes:
    """RGB ``uint8`` pixels as PNG bytes with fixed settings (see :data:`IN_MEMORY_RULE`)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), "RGB").save(buffer, format="PNG", compress_level=6, optimize=False)
    return buffer.getvalue()


def is_single_image(value: object) -> bool:
    """Whether ``value`` is one image (a path or URL, bytes, a PIL image, one array) rather than several."""
    if isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview, ImageInput, BadInput)):
        return True
    if isinstance(value, np.ndarray):
        return not (value.ndim == 4 or (value.ndim == 1 and value.dtype.kind in "OUS"))
    return is_pil_image(value)


def as_image_list(images: Any) -> tuple[list[Any], bool]:
    """``images`` as a list, and whether it was a single image (whose answer is then not a list).

    Raises:
        ImageError: ``images`` is neither an image nor a collection of them (its type is named).
    """
    if is_single_image(images):
        return [images], True
    if isinstance(images, np.ndarray):  # (N, H, W, 3) or an array of paths
        return list(images), False
    try:
        return list(images), False
    except TypeError:
        raise ImageError(f"expected an image (a path, URL, bytes, PIL image or RGB array) or a list of them, "
                         f"got {type(images).__name__}") from None


def describe_kind(image: object) -> str:
    """How messages name an image that has no name of its own."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(image, np.ndarray):
        return "<array>"
    if is_pil_image(image):
        return "<PIL image>"
    return type(image).__name__


def is_labelled_collection(data: object) -> bool:
    """Whether ``data`` is labelled images in memory ((image, label) pairs or a DataFrame) rather than
    a path or URI naming a data set."""
    from photolabel.dataset import Dataset

    return not isinstance(data, (str, os.PathLike, bytes, Dataset))


def labelled_items(data: Any) -> list[tuple[str, str, str | bytes, str]]:
    """``(where, source, image, label)`` for each labelled image in ``data``: a sequence of
    ``(image, label)`` pairs, or a DataFrame (anything with ``columns`` and ``__getitem__``) with
    ``image`` and ``label`` columns. ``image`` comes back as a path or URI (str) or as encoded bytes
    (arrays and PIL images PNG-encoded, see :data:`IN_MEMORY_RULE`).

    Raises:
        DataError: an item that is not a pair, a missing column, an image or label of the wrong type;
            the message names the item (``item 3``, ``row 3``) and the type, never the value.
    """
    if hasattr(data, "columns") and hasattr(data, "__getitem__"):
        columns = [str(name) for name in data.columns]
        for column in ("image", "label"):
            if column not in columns:
                raise DataError(f"the DataFrame has no '{column}' column (its columns: {', '.join(columns) or 'none'})")
        index = list(getattr(data, "index", range(len(data["image"]))))
        pairs = list(zip(list(data["image"]), list(data["label"])))
        names = [f"row {name}" for name in index]
    else:
        try:
            items = list(data)
        except TypeError:
            raise DataError(f"expected a folder, archive or CSV path, (image, label) pairs or a DataFrame, "
                            f"got {type(data).__name__}") from None
        pairs, names = [], []
        for position, item in enumerate(items):
            if is_single_image(item) or not hasattr(item, "__len__") or len(item) != 2:
                raise DataError(f"item {position}: expected an (image, label) pair, got {type(item).__name__}")
            pairs.append((item[0], item[1]))
            names.append(f"item {position}")
    result: list[tuple[str, str, str | bytes, str]] = []
    for where, (image, label) in zip(names, pairs):
        label_text = _label_text(label, where)
        if isinstance(image, (str, os.PathLike)):
            text = os.fspath(image)
            result.append((where, text, text, label_text))
            continue
        kind = describe_kind(image)
        if isinstance(image, (bytes, bytearray, memoryview)):
            body = bytes(image)
        elif isinstance(image, np.ndarray):
            try:
                body = encode_png(check_pixels(image, f"{where} ({kind})"))
            except ImageError as exc:
                raise DataError(str(exc)) from None
        elif is_pil_image(image):
            body = encode_png(pil_to_pixels(image))
        else:
            raise DataError(f"{where}: expected an image (a path, URL, bytes, PIL image or RGB uint8 array), "
                            f"got {kind}")
        result.append((where, f"{where} ({kind})", body, label_text))
    return result


def _label_text(label: object, where: str) -> str:
    if isinstance(label, (np.integer, int)) and not isinstance(label, bool):
        return str(label)
    if not isinstance(label, str):
        raise DataError(f"{where}: a label must be a string, got {type(label).__name__}")
    if not label.strip():
        raise DataError(f"{where}: the label is empty")
    return str(label)


def open_labelled_data(data: Any, **options: Any) -> Dataset:
    """The :class:`Dataset` that ``data`` names: a folder, archive or CSV (path or URI, through
    :func:`photolabel.sources.load_dataset`, which gets ``options``), or labelled images in memory
    (see :func:`labelled_items`; the options ``classes``, ``skip_bad``, ``fetch_options``,
    ``progress`` and ``require_labels`` apply). The caller closes it."""
    from photolabel.sources import load_dataset, load_pairs

    if not is_labelled_collection(data):
        return load_dataset(data, **options)
    keep = ("classes", "skip_bad", "fetch_options", "progress", "require_labels")
    return load_pairs(labelled_items(data), **{key: value for key, value in options.items() if key in keep})


def describe_data(data: Any) -> str:
    """How messages name ``data``: its path or URI, or "the given images" for images in memory."""
    return "the given images" if is_labelled_collection(data) else os.fspath(data)
