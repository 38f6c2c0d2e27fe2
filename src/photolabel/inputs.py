"""What users hand us as images, made ready for a model: local paths stay paths, URIs are read.

:class:`~photolabel.model.Model` reads no network; every adapter that takes image
names (the CLI's ``predict``, the worker) resolves them here, through the URI layer
(:mod:`photolabel.storage`), concurrently and with the runtime's fetch limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from photolabel import storage
from photolabel.dataset import BadInput
from photolabel.embedding import ImageInput
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
