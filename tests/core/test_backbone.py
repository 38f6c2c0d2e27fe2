"""The real EfficientNet-Lite0 backbone: real ImageNet weights, exact and stable vectors."""

from __future__ import annotations

import numpy as np
import pytest

from photolabel.backbones import get_backbone, list_backbones
from photolabel.errors import UnknownNameError
from photolabel.images import resize_rgb

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the reference photos")


@pytest.fixture(scope="module")
def lite0(cache_dir):
    return get_backbone("efficientnet-lite0", cache_dir=cache_dir)


def test_registry_lists_both_kinds_and_rejects_unknown_names():
    names = list_backbones()
    assert "efficientnet-lite0" in names and "classic" in names
    with pytest.raises(UnknownNameError) as info:
        get_backbone("resnet-9000")
    assert "efficientnet-lite0" in str(info.value) and "classic" in str(info.value)


def test_imagenet_head_recognises_a_cat_and_an_espresso(lite0):
    cat = lite0.prepare(skimage_data.chelsea())
    coffee = lite0.prepare(skimage_data.coffee())
    probs = lite0.imagenet_probabilities(np.stack([cat, coffee]))
    assert 281 <= int(np.argmax(probs[0])) <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert int(np.argmax(probs[1])) in (967, 968)  # espresso, cup
    assert probs[0, 281:286].sum() > 0.5


def test_vectors_do_not_depend_on_batch_or_thread_count(lite0, cache_dir):
    rng = np.random.default_rng(0)
    images = np.stack([resize_rgb(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8), (224, 224))
                       for _ in range(5)])
    together = lite0.embed_batch(images)
    alone = np.concatenate([lite0.embed_batch(images[i : i + 1]) for i in range(5)])
    one_thread = get_backbone("efficientnet-lite0", threads=1, cache_dir=cache_dir).embed_batch(images)
    assert together.shape == (5, 1280) and together.dtype == np.float32
    assert together.tobytes() == alone.tobytes()
    assert together.tobytes() == one_thread.tobytes()


def test_hash_covers_the_weights_and_the_export_is_cached(lite0, cache_dir):
    lite1 = get_backbone("efficientnet-lite1", cache_dir=cache_dir)
    assert lite0.hash != lite1.hash and len(lite0.hash) == 64
    path = lite0.onnx_path()
    assert path.parent == cache_dir / "backbones" and lite0.hash[:16] in path.name
    mtime = path.stat().st_mtime_ns
    assert lite0.onnx_path() == path and path.stat().st_mtime_ns == mtime  # not exported again


def test_corrupt_onnx_export_is_rebuilt(tmp_path):
    backbone = get_backbone("efficientnet-lite0", cache_dir=tmp_path)
    path = backbone.onnx_path()
    path.write_bytes(b"garbage")
    assert backbone.onnx_path().stat().st_size > 1_000_000
