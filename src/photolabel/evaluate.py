"""Evaluate a trained model on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from photolabel.cache import EmbeddingCache, resolve_cache_dir
from photolabel.config import RUNTIME_DEFAULTS, Runtime, merge_overrides
from photolabel.dataset import BadInput, Dataset
from photolabel.embedding import embed_records
from photolabel.errors import DataError
from photolabel.evaluation import classification_metrics
from photolabel.fetch import FetchOptions
from photolabel.inputs import describe_data
from photolabel.model import Model, load_model


def evaluate(
    model: Model | str | Path,
    data: str | Path | Dataset | Any,
    runtime: Runtime | None = None,
    *,
    skip_bad: bool = False,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    fetch_options: FetchOptions | None = None,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Metrics of ``model`` on every labelled image in ``data`` (any layout ``train`` accepts, including
    ``(image, label)`` pairs and a DataFrame with ``image`` and ``label`` columns).

    Returns the dict of :func:`photolabel.evaluation.classification_metrics` plus
    ``model_id`` and ``skipped``; for a model that answers unknown, ``unknown`` says for how
    many images it did (accuracy and the other scores count their top label). Labels in ``data``
    that the model does not know are an error naming them. The keyword arguments override single
    fields of ``runtime``.
    """
    runtime = merge_overrides(runtime or RUNTIME_DEFAULTS, threads=threads, cache_dir=cache_dir,
                              batch_size=batch_size, fetch=fetch_options, progress=progress)
    if not isinstance(model, Model):
        model = load_model(model, runtime=runtime)
    if isinstance(data, Dataset):
        dataset, owned = data, False
    else:
        from photolabel.inputs import open_labelled_data

        dataset = open_labelled_data(data, skip_bad=skip_bad, fetch_options=runtime.fetch,
                                     progress=runtime.progress, require_labels=False,
                                     archive_limits=runtime.archive_limits, csv_limits=runtime.csv_limits)
        owned = True
    try:
        unknown = sorted({r.label for r in dataset.records} - set(model.labels))
        if unknown:
            raise DataError(
                f"{'the data set' if isinstance(data, Dataset) else describe_data(data)}: label(s) "
                f"{', '.join(unknown)} are not known to the model "
                f"(it knows {', '.join(model.labels)})"
            )
        backbone = model.backbone
        cache = EmbeddingCache(resolve_cache_dir(runtime.cache_dir or model.cache_dir),
                               backbone.hash, backbone.embedding_dim)
        records = dataset.records
        embedded, problems = embed_records(records, backbone, cache=cache, skip_bad=skip_bad,
                                           runtime=runtime.replace(max_pixels=model.max_pixels))
        skipped: list[BadInput] = [*dataset.skipped, *problems]
        index = {label: k for k, label in enumerate(model.labels)}
        y_true = np.array([index[records[i].label] for i in embedded.indices], dtype=np.int64)
        probabilities = model.predict_embeddings(embedded.vectors)
        metrics = classification_metrics(y_true, probabilities, model.labels,
                                         unknown=model.post.unknown_tests(embedded.vectors, probabilities))
        metrics["model_id"] = model.model_id
        metrics["skipped"] = [{"image": b.source, "reason": b.reason} for b in skipped]
        return metrics
    finally:
        if owned:
            dataset.close()
