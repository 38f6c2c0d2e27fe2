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


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-compatible server (moto in server mode) on 127.0.0.1 for the session."""
    pytest.importorskip("moto.server", reason="moto[server] is not installed: pip install -e '.[test]'")
    pytest.importorskip("s3fs", reason="s3fs is not installed: pip install -e '.[test]'")
    from s3server import running_s3_server

    with running_s3_server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A new bucket on ``s3_server``, with the standard AWS variables pointing at it for this test."""
    from uuid import uuid4

    from s3server import ADMIN_KEY, REGION

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ADMIN_KEY[0])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ADMIN_KEY[1])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    # nothing from this machine's AWS set-up, and no instance-metadata lookups
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"photolabel-{uuid4().hex[:12]}"
    s3_server.create_bucket(bucket)
    return bucket
