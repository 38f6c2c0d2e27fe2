"""The exported ONNX graph runs in plain onnxruntime and matches predict."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import photolabel
from photolabel.backbones.efficientnet import VARIANTS as _VARIANTS
from photolabel.config import TRAIN_DEFAULTS as _DEFAULTS
from photolabel.errors import ExportError
from photolabel.export import export_onnx
from photolabel.images import decode_image, resize_rgb

#: the default backbone's input size (height, width)
SIZE = next((v.image_size, v.image_size) for v in _VARIANTS if v.name == _DEFAULTS.backbone)


def test_export_matches_predict(trained_model, small_data, tmp_path):
    model = photolabel.load_model(trained_model)
    files = sorted(small_data.rglob("*.jpg"))[::7]
    out = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["labels"].split("\n") == list(model.labels) and meta["model_id"] == model.model_id
    batch = np.stack([resize_rgb(decode_image(f.read_bytes(), draft_size=SIZE), SIZE) for f in files])
    (probs,) = session.run(["probabilities"], {"image": batch})
    expected = model.predict_proba(files)
    assert probs.shape == expected.shape
    np.testing.assert_allclose(probs, expected, atol=1e-4)


def test_classic_models_export_only_their_head(small_data, tmp_path, cache_dir):
    result = photolabel.train(small_data, tmp_path / "m", backbone="classic", cache_dir=cache_dir)
    with pytest.raises(ExportError, match="only the head can be exported") as raised:
        export_onnx(result.model, tmp_path / "full.onnx")
    assert raised.value.remedy == "head_only"  # the CLI words it as --head-only; the core names no flag
    assert not (tmp_path / "full.onnx").exists()
    head = export_onnx(result.model, tmp_path / "head.onnx", head_only=True)
    session = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"])
    vectors = np.ones((2, result.model.card.backbone.embedding_dim), dtype=np.float32)
    (probs,) = session.run(["probabilities"], {"embedding": vectors})
    np.testing.assert_allclose(probs, result.model.predict_embeddings(vectors), atol=1e-4)


def test_export_applies_the_temperature_and_answers_unknown_like_the_model(trained_model, small_data, tmp_path):
    from foreign_images import generated_images

    model = photolabel.load_model(trained_model)
    assert model.post.temperature != 1.0 and model.post.unknown is not None
    own = [resize_rgb(decode_image(f.read_bytes(), draft_size=SIZE), SIZE)
           for f in sorted(small_data.rglob("*.jpg"))[::5]]
    foreign = [resize_rgb(image, SIZE) for image in generated_images().values()]
    batch = np.stack(own + foreign)
    session = ort.InferenceSession(str(export_onnx(model, tmp_path / "model.onnx")),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probabilities", "unknown"]
    assert float(session.get_modelmeta().custom_metadata_map["temperature"]) == model.post.temperature
    probs, unknown = session.run(["probabilities", "unknown"], {"image": batch})
    predictions = model.predict(list(batch))
    np.testing.assert_allclose(probs, [[p.scores[label] for label in model.labels] for p in predictions], atol=1e-4)
    assert unknown.dtype == np.bool_ and unknown.tolist() == [p.unknown for p in predictions]
    assert unknown[len(own):].all() and not unknown[:len(own)].all()

    head = ort.InferenceSession(str(export_onnx(model, tmp_path / "head.onnx", head_only=True)),
                                providers=["CPUExecutionProvider"])
    vectors = np.random.default_rng(0).random((5, model.card.backbone.embedding_dim)).astype(np.float32)
    head_probs, head_unknown = head.run(None, {"embedding": vectors})
    np.testing.assert_allclose(head_probs, model.predict_embeddings(vectors), atol=1e-5)
    assert head_unknown.tolist() == model.unknown_embeddings(vectors).tolist()
