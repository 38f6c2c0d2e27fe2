"""Evaluate a trained model on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from photolabel.cache import EmbeddingCache, resolve_cache_dir
from photolabel.dataset import BadInput, Dataset
from photolabel.embedding import DEFAULT_BATCH_SIZE, embed_records
from photolabel.errors import DataError
from photolabel.evaluation import classification_metrics
from photolabel.fetch import FetchOptions
from photolabel.model import Model, load_model


def evaluate(
    model: Model | str | Path,
    data: str | Path | Dataset,
    *,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    skip_bad: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    fetch_options: FetchOptions | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on every labelled image in ``data`` (any layout ``train`` accepts).

    Returns the dict of :func:`photolabel.evaluation.classification_metrics` plus
    ``model_id`` and ``skipped``. Labels in ``data`` that the model does not know
    are an error naming them.
    """
    if not isinstance(model, Model):
        model = load_model(model, threads=threads, cache_dir=cache_dir)
    if isinstance(data, Dataset):
        dataset, owned = data, False
    else:
        from photolabel.sources import load_dataset

        dataset = load_dataset(data, skip_bad=skip_bad, fetch_options=fetch_options or FetchOptions(),
                               progress=progress, require_labels=False)
        owned = True
    try:
        unknown = sorted({r.label for r in dataset.records} - set(model.labels))
        if unknown:
            raise DataError(
                f"{data}: label(s) {', '.join(unknown)} are not known to the model "
                f"(it knows {', '.join(model.labels)})"
            )
        backbone = model.backbone
        cache = EmbeddingCache(resolve_cache_dir(cache_dir if cache_dir is not None else model.cache_dir),
                               backbone.hash, backbone.embedding_dim)
        records = dataset.records
        embedded, problems = embed_records(
            records, backbone, cache=cache, skip_bad=skip_bad, action="evaluate", batch_size=batch_size,
            workers=threads or 2, max_pixels=model.max_pixels, progress=progress,
        )
        skipped: list[BadInput] = [*dataset.skipped, *problems]
        index = {label: k for k, label in enumerate(model.labels)}
        y_true = np.array([index[records[i].label] for i in embedded.indices], dtype=np.int64)
        probabilities = model.predict_embeddings(embedded.vectors)
        metrics = classification_metrics(y_true, probabilities, model.labels)
        metrics["model_id"] = model.model_id
        metrics["skipped"] = [{"image": b.source, "reason": b.reason} for b in skipped]
        return metrics
    finally:
        if owned:
            dataset.close()
