"""Fine-tuning the backbone's last blocks, on activations cached at a cut, in minutes on a CPU.

The EfficientNet-Lite network is split before its last :data:`Recipe.tail_blocks` MBConv
blocks. The **trunk** (image -> the activation at the cut) is exported to ONNX once and run on
ONNX Runtime; its activations are cached per (image sha256, trunk hash) like embeddings, so a
second run computes none. The **tail** (the blocks after the cut, the 1x1 conv head, its
BatchNorm, ReLU6 and the pooling; ImageNet weights to start) is trained with a linear softmax
classifier on the training split's activations in PyTorch, then exported to ONNX
(``finetune/tail.onnx`` in the model directory). The classifier is dropped: the tuned tail gives
1280-d embeddings and the model's head is fitted on them as usual, so prediction is trunk ->
tail -> head, and the exported graph is the three merged.

Deterministic on CPU (see :func:`deterministic_torch`): one thread, deterministic algorithms,
seeds from the run seed, batch order from a seeded generator, BatchNorm statistics frozen (the
tail stays in eval mode, which also turns drop-connect off), a zero-initialised classifier (no
random draw at all), a fixed number of epochs at most, and early stopping on a holdout of the
training rows chosen by hash (:data:`HOLDOUT_RULE`; never the validation split).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from photolabel.backbones.base import Backbone
from photolabel.backbones.efficientnet import (
    VARIANTS,
    EfficientNetLite,
    EfficientNetTrunk,
    build_tail,
    cached_onnx,
    export_tail_onnx,
    ort_session,
)
from photolabel.dataset import ImageRecord
from photolabel.errors import ConfigError, ModelError
from photolabel.hashing import sha256_bytes, sha256_json

#: bump when training the tail changes for the same recipe (it is written into the card)
FINETUNE_VERSION = 1
TAIL_FILE = "finetune/tail.onnx"
#: the backbones that have blocks to tune
FINETUNABLE = tuple(variant.name for variant in VARIANTS)
HOLDOUT_RULE = (
    "per label, training images ordered by sha256(f'finetune:{seed}:{image_sha256}'); the first "
    "round(n * holdout_fraction) (at least 1, at most n - 1; none for a label with one image) are the holdout"
)
_TAIL_BATCH = 64  # rows per ONNX Runtime call when the tuned tail embeds activations


@dataclass(frozen=True)
class Recipe:
    """How the tail is trained; written into the card's ``finetune`` section."""

    tail_blocks: int = 1
    max_epochs: int = 8
    patience: int = 2
    batch_size: int = 32
    tail_learning_rate: float = 1e-4
    classifier_learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    holdout_fraction: float = 0.15
    optimizer: str = "AdamW"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RECIPE = Recipe()


def check_finetunable(backbone: str) -> None:
    """Raises :class:`ConfigError` (field ``finetune``) when ``backbone`` has no network blocks to tune."""
    if backbone not in FINETUNABLE:
        raise ConfigError(
            f"fine-tuning needs a network backbone ({', '.join(FINETUNABLE)}); backbone {backbone!r} "
            "has no layers to tune", field="finetune")


def trunk_for(backbone: Backbone, recipe: Recipe | None = None) -> EfficientNetTrunk:
    """The trunk of ``backbone`` at the cut of ``recipe`` (None: :data:`RECIPE`): what fine-tuning embeds
    and caches.

    Raises:
        ConfigError: ``backbone`` is not a network (``classic``).
    """
    if not isinstance(backbone, EfficientNetLite):
        check_finetunable(backbone.name)
        raise ConfigError(f"backbone {backbone.name!r} cannot be split for fine-tuning", field="finetune")
    return backbone.trunk((recipe or RECIPE).tail_blocks)


def holdout_mask(keys: Sequence[str], y: np.ndarray, seed: int, fraction: float) -> np.ndarray:
    """Which training rows are the early-stopping holdout; see :data:`HOLDOUT_RULE`."""
    y = np.asarray(y)
    mask = np.zeros(len(keys), dtype=bool)
    for label in np.unique(y):
        rows = sorted(np.flatnonzero(y == label), key=lambda i: sha256_bytes(f"finetune:{seed}:{keys[i]}".encode()))
        if len(rows) < 2:
            continue
        count = min(max(int(np.floor(len(rows) * fraction + 0.5)), 1), len(rows) - 1)
        mask[rows[:count]] = True
    return mask


@contextlib.contextmanager
def deterministic_torch(seed: int) -> Iterator[None]:
    """Within the block: one thread, deterministic algorithms only, the global generator seeded with
    ``seed``; the process's settings and random state come back after it."""
    import torch

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


class FinetunedBackbone(Backbone):
    """A trunk and a tuned tail: image -> 1280-d embedding, both on ONNX Runtime.

    The trunk's session is the base backbone's, shared per process; the tail's comes from the
    model's ``finetune/tail.onnx``. Its ``hash`` covers the trunk's hash and the tail's bytes, so it
    keys the embedding cache and enters the model id like any backbone's.
    """

    def __init__(self, trunk: EfficientNetTrunk, tail_onnx: bytes) -> None:
        self.trunk = trunk
        self.tail_onnx = tail_onnx
        self.name = trunk.backbone.name
        self.embedding_dim = trunk.backbone.embedding_dim
        self.preprocessing = trunk.preprocessing
        self._session = None

    @cached_property
    def tail_sha256(self) -> str:
        return sha256_bytes(self.tail_onnx)

    @cached_property
    def hash(self) -> str:  # type: ignore[override]
        return tuned_hash(self.trunk.hash, self.tail_sha256)

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        return self.trunk.prepare(rgb)

    @property
    def draft_size(self) -> tuple[int, int]:
        return self.trunk.draft_size

    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        return self.embed_activations(self.trunk.embed_batch(prepared))

    def embed_activations(self, activations: np.ndarray) -> np.ndarray:
        """Trunk activations (N, C*H*W) -> tuned embeddings (N, 1280), float32."""
        activations = np.ascontiguousarray(activations, dtype=np.float32)
        if activations.shape[0] == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        if self._session is None:
            self._session = ort_session(self.tail_onnx, self.trunk.threads)
        parts = [self._session.run(None, {self._session.get_inputs()[0].name: activations[i : i + _TAIL_BATCH]})[0]
                 for i in range(0, len(activations), _TAIL_BATCH)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def onnx_path(self) -> Path:
        """The trunk and the tuned tail merged into one graph (uint8 image -> embedding), cached;
        what :func:`photolabel.export.export_onnx` puts in front of the head."""
        return cached_onnx(self.trunk.backbone.cache_dir, f"{self.name}-tuned-{self.hash[:16]}.onnx",
                           self._merged_onnx)

    def _merged_onnx(self) -> bytes:
        import onnx
        from onnx import compose

        trunk = onnx.load(str(self.trunk.onnx_path()))
        tail = compose.add_prefix(onnx.load_from_string(self.tail_onnx), prefix="tail/")
        merged = compose.merge_models(trunk, tail, io_map=[(trunk.graph.output[0].name, tail.graph.input[0].name)],
                                      producer_name="photolabel")
        return merged.SerializeToString()


def tuned_hash(trunk_hash: str, tail_sha256: str) -> str:
    """The hash of a fine-tuned backbone: over the trunk's hash and the tuned tail's bytes."""
    return sha256_json({"kind": "efficientnet-lite-finetuned", "version": FINETUNE_VERSION,
                        "trunk_hash": trunk_hash, "tail_sha256": tail_sha256})


@dataclass
class TunedTail:
    """The outcome of :func:`tune_tail`: the backbone with the tuned tail, the card's section, the curves."""

    backbone: FinetunedBackbone
    section: dict[str, Any]
    curves: list[dict[str, float]]

    def files(self) -> dict[str, bytes]:
        """The model directory's files (hashed into model.json)."""
        return {TAIL_FILE: self.backbone.tail_onnx}

    def metrics(self) -> dict[str, Any]:
        return {"epochs_run": self.section["epochs_run"], "best_epoch": self.section["best_epoch"],
                "holdout_rows": self.section["holdout_rows"], "curves": self.curves}


def tune_tail(
    trunk: EfficientNetTrunk,
    activations: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    keys: Sequence[str],
    seed: int,
    *,
    recipe: Recipe = RECIPE,
    on_epoch: Callable[[int, int], None] | None = None,
) -> TunedTail:
    """Train the tail after ``trunk``'s cut with a linear softmax classifier on ``activations`` (N, C*H*W)
    of the training rows (labels ``y``, image sha256 ``keys`` for the holdout); see the module's text.

    The kept tail is the one of the epoch with the lowest holdout log-loss (the last one without a
    holdout). ``on_epoch(epoch, max_epochs)`` is called after each epoch.
    """
    import torch

    y = np.asarray(y, dtype=np.int64)
    holdout = holdout_mask(keys, y, seed, recipe.holdout_fraction)
    with deterministic_torch(seed):
        tail = build_tail(trunk.variant, recipe.tail_blocks)
        classifier = torch.nn.Linear(trunk.backbone.embedding_dim, n_classes)
        torch.nn.init.zeros_(classifier.weight)  # no gradient reaches the tail until the classifier has learnt
        torch.nn.init.zeros_(classifier.bias)
        optimizer = torch.optim.AdamW(
            [{"params": list(tail.parameters()), "lr": recipe.tail_learning_rate},
             {"params": list(classifier.parameters()), "lr": recipe.classifier_learning_rate}],
            weight_decay=recipe.weight_decay)
        X = torch.from_numpy(np.ascontiguousarray(activations[~holdout], dtype=np.float32))
        Y = torch.from_numpy(y[~holdout])
        X_hold = torch.from_numpy(np.ascontiguousarray(activations[holdout], dtype=np.float32))
        Y_hold = torch.from_numpy(y[holdout])
        order = torch.Generator().manual_seed(seed)
        tail.eval()  # BatchNorm keeps its ImageNet statistics; drop-connect stays off
        curves: list[dict[str, float]] = []
        best_state, best_epoch, best_loss, stale = copy.deepcopy(tail.state_dict()), 0, float("inf"), 0
        for epoch in range(1, recipe.max_epochs + 1):
            total = 0.0
            for batch in torch.randperm(len(X), generator=order).split(recipe.batch_size):
                loss = torch.nn.functional.cross_entropy(classifier(tail(X[batch])), Y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            point = {"epoch": epoch, "train_loss": round(total / max(len(X), 1), 6)}
            if len(X_hold):
                with torch.no_grad():
                    logits = torch.cat([classifier(tail(part)) for part in X_hold.split(recipe.batch_size)])
                    hold_loss = float(torch.nn.functional.cross_entropy(logits, Y_hold))
                    point["holdout_loss"] = round(hold_loss, 6)
                    point["holdout_accuracy"] = round(float((logits.argmax(1) == Y_hold).double().mean()), 6)
            else:
                hold_loss = -float(epoch)  # no holdout: the last epoch is kept
            curves.append(point)
            if on_epoch is not None:
                on_epoch(epoch, recipe.max_epochs)
            if hold_loss < best_loss:
                best_state, best_epoch, best_loss, stale = copy.deepcopy(tail.state_dict()), epoch, hold_loss, 0
            else:
                stale += 1
                if stale >= recipe.patience:
                    break
        tail.load_state_dict(best_state)
        tail_onnx = export_tail_onnx(tail)
    backbone = FinetunedBackbone(trunk, tail_onnx)
    section = {
        "version": FINETUNE_VERSION,
        "cut": f"before the last {recipe.tail_blocks} MBConv block(s) of {trunk.variant.name}",
        "tail_blocks": recipe.tail_blocks,
        "trunk_hash": trunk.hash,
        "tail_file": TAIL_FILE,
        "tail_sha256": backbone.tail_sha256,
        "epochs_run": len(curves),
        "best_epoch": best_epoch,
        "holdout_rows": int(holdout.sum()),
        "holdout_rule": HOLDOUT_RULE,
        "recipe": recipe.to_dict(),
    }
    return TunedTail(backbone, section, curves)


def finetune_rows(
    trunk: EfficientNetTrunk,
    activations: Mapping[str, np.ndarray],
    train_rows: Sequence[ImageRecord],
    labels: Sequence[str],
    seed: int,
    *,
    recipe: Recipe | None = None,
    on_epoch: Callable[[int, int], None] | None = None,
) -> tuple[TunedTail, dict[str, np.ndarray]]:
    """Tune the tail on ``train_rows``' activations with ``recipe`` (None: :data:`RECIPE`); returns it and
    the tuned embedding of every image in ``activations`` (keyed by sha256, like them): what training fits
    the head on."""
    recipe = recipe or RECIPE
    index = {label: k for k, label in enumerate(labels)}
    tuned = tune_tail(trunk, np.stack([activations[r.sha256] for r in train_rows]),
                      np.array([index[r.label] for r in train_rows], dtype=np.int64), len(labels),
                      [r.sha256 for r in train_rows], seed, recipe=recipe, on_epoch=on_epoch)
    keys = list(activations)
    vectors = tuned.backbone.embed_activations(np.stack([activations[k] for k in keys]))
    return tuned, dict(zip(keys, vectors))


def read_tail(card: Any, folder: Path, *, where: str | Path | None = None) -> bytes | None:
    """A fine-tuned model's tail from its directory ``folder`` (its hash is checked with the other
    files'); None for other models. Errors name ``where`` (the model's path or URI), else ``folder``.

    Raises:
        ModelError: the card's ``finetune`` section names no readable tail file.
    """
    if card.finetune is None:
        return None
    try:
        return (Path(folder) / str(card.finetune["tail_file"])).read_bytes()
    except (KeyError, TypeError, OSError) as exc:
        raise ModelError(f"{where or folder}: cannot read the fine-tuned tail ({exc})") from None


def finetuned_backbone(base: Backbone, section: Mapping[str, Any], tail_onnx: bytes) -> FinetunedBackbone:
    """The backbone of a fine-tuned model: ``base``'s trunk at the card's cut and the model's tail.

    Raises:
        ModelError: the installed backbone's trunk is not the one the model was tuned on.
    """
    if not isinstance(base, EfficientNetLite):
        raise ModelError(f"a fine-tuned model needs a network backbone, not {base.name!r}")
    trunk = base.trunk(int(section["tail_blocks"]))
    if trunk.hash != section.get("trunk_hash"):
        raise ModelError(f"the model was tuned on trunk {str(section.get('trunk_hash'))[:16]}…, but the installed "
                         f"{base.name} gives {trunk.hash[:16]}…; reinstall the same weights package or retrain")
    return FinetunedBackbone(trunk, tail_onnx)
