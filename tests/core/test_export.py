"""The exported ONNX graph runs in plain onnxruntime and matches predict."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import photolabel
from photolabel.errors import ExportError
from photolabel.export import export_onnx
from photolabel.images import decode_image, resize_rgb


def test_export_matches_predict(trained_model, small_data, tmp_path):
    model = photolabel.load_model(trained_model)
    files = sorted(small_data.rglob("*.jpg"))[::7]
    out = export_onnx(model, tmp_path / "model.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["labels"].split("\n") == list(model.labels) and meta["model_id"] == model.model_id
    batch = np.stack([resize_rgb(decode_image(f.read_bytes(), draft_size=(224, 224)), (224, 224)) for f in files])
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
