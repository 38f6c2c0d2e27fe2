"""Shared fixtures: a private cache, a small data set and one model trained on it, once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples" / "fashion-tiny"
LABELS = ("blouse", "halter", "sweater")
IMAGES_PER_LABEL = 20


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Embedding and backbone cache for the whole session, so nothing touches ~/.cache."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def small_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<label>/<file>``: the first 20 images (sorted by name) of each label of fashion-tiny."""
    root = tmp_path_factory.mktemp("small_data")
    for label in LABELS:
        (root / label).mkdir()
        for image in sorted((EXAMPLES / label).glob("*.jpg"))[:IMAGES_PER_LABEL]:
            shutil.copyfile(image, root / label / image.name)
    return root


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory, small_data: Path, cache_dir: Path) -> Path:
    """A model trained once on ``small_data`` with the library defaults; its directory."""
    import photolabel

    out = tmp_path_factory.mktemp("trained") / "model"
    photolabel.train(small_data, out, cache_dir=cache_dir)
    return out
