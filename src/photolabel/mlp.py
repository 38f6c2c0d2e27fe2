"""The ``mlp`` head: one fully connected hidden layer, ReLU, dropout, softmax.

This is the "new top layer" of classic transfer learning (a dense ReLU layer with dropout,
then a softmax over the labels), trained on the backbone's embeddings. It is written in
numpy float64 (no deep-learning framework) so that, like every photolabel head, the same
embeddings, parameters, seed and machine give the same bytes:

* inputs are standardised (mean and scale of the rows given to ``fit``; folded into the
  first layer once trained, so a model is four arrays);
* He-initialised weights, the row order of every epoch and every dropout mask come from
  numpy Generators spawned from the seed, one stream each;
* mini-batch AdamW (decoupled weight decay on the two weight matrices, not the biases);
  the loss is cross-entropy, each row weighted by ``sample_weight`` (scaled to mean 1);
* every matrix product runs on one BLAS thread.

Early stopping: ``fit`` only gets the training images, so it holds out
``validation_fraction`` of each label's rows (chosen by the seed; at most all but one row
of a label) and trains on the rest. After each epoch it measures the held-out loss; when
that has not improved for ``patience`` epochs, training stops, and the weights of the
epoch with the lowest held-out loss are kept. With ``validation_fraction=0`` (or too few
rows to hold any out) every row is trained on for ``epochs`` epochs and the last epoch is
kept. The per-epoch curve (the training rows' mean loss and accuracy as seen during the epoch,
with dropout; the hold-out's after it) is stored with the model (``history.npy``) and reported
to ``Head.log`` (TensorBoard) under :data:`CURVE_TAGS`, step = epoch (from 1).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper, numpy_helper

from photolabel.errors import DataError, ModelError
from photolabel.heads import (
    HEAD_INPUT,
    HEAD_OUTPUT,
    Head,
    Param,
    _single_thread,
    _softmax,
    _standardise,
    head_onnx_model,
    register_head,
)

_ADAM_BETAS = (0.9, 0.999)
_ADAM_EPSILON = 1e-8
_ARRAYS = ("w1", "b1", "w2", "b2")
#: columns of ``history_`` (one row per epoch run), as the TensorBoard tags they are reported under
CURVE_TAGS = ("loss/train", "accuracy/train", "loss/early_stopping", "accuracy/early_stopping")


@register_head
class MlpHead(Head):
    """One hidden layer (ReLU, dropout while training) and a softmax, trained by AdamW with early stopping."""

    name = "mlp"
    summary = "one hidden layer (ReLU, dropout) trained in epochs by AdamW, with early stopping"
    version = 1
    constraints: ClassVar[dict[str, Param]] = {
        "hidden_units": Param(int, "units in the hidden layer", low=1, high=65_536),
        "dropout": Param(float, "share of hidden units dropped at each training step", low=0.0, high=1.0,
                         high_open=True),
        "learning_rate": Param(float, "AdamW's step size", low=0.0, low_open=True, high=1.0),
        "epochs": Param(int, "most passes over the training images", low=1, high=100_000),
        "batch_size": Param(int, "training images per gradient step", low=1, high=100_000),
        "weight_decay": Param(float, "AdamW's decoupled weight decay of the weight matrices", low=0.0, high=1.0),
        "patience": Param(int, "epochs without a lower held-out loss before training stops", low=1, high=100_000),
        "validation_fraction": Param(float, "share of each label's training images held out for early stopping "
                                            "(0: none; train every epoch, keep the last)", low=0.0, high=0.5),
    }
    # more dropout and smaller steps first: a tie goes to the gentler fit
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"dropout": (0.5, 0.2), "learning_rate": (0.0003, 0.001)}

    def __init__(self, *, seed: int = 1234, hidden_units: int = 256, dropout: float = 0.2,
                 learning_rate: float = 0.001, epochs: int = 30, batch_size: int = 32, weight_decay: float = 0.01,
                 patience: int = 5, validation_fraction: float = 0.1) -> None:
        super().__init__(seed=seed)
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.patience = patience
        self.validation_fraction = validation_fraction

    # -- fitting -----------------------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int, *,
            sample_weight: np.ndarray | None = None) -> MlpHead:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        weight = _row_weights(sample_weight, len(X))
        split_rng, init_rng, order_rng, dropout_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(4))
        fit_rows, held_rows = holdout_rows(y, n_classes, self.validation_fraction, split_rng)
        if weight[fit_rows].sum() <= 0:
            raise DataError("head mlp: every image left to train on (after the early-stopping hold-out) has weight 0")
        weight = weight / weight[fit_rows].mean()
        mean, scale = _standardise(X)
        Xs = (X - mean) / scale
        dim = X.shape[1]
        params = {
            "w1": init_rng.normal(0.0, np.sqrt(2.0 / dim), size=(dim, self.hidden_units)),
            "b1": np.zeros(self.hidden_units),
            "w2": init_rng.normal(0.0, np.sqrt(2.0 / (self.hidden_units + n_classes)),
                                  size=(self.hidden_units, n_classes)),
            "b2": np.zeros(n_classes),
        }
        adam = _AdamW(params, self.learning_rate, self.weight_decay, decayed=("w1", "w2"))
        X_fit, y_fit, w_fit = Xs[fit_rows], y[fit_rows], weight[fit_rows]
        X_held, y_held, w_held = Xs[held_rows], y[held_rows], weight[held_rows]
        if w_held.sum() <= 0:
            w_held = np.ones_like(w_held)
        history: list[tuple[float, float, float, float]] = []
        best: dict[str, np.ndarray] | None = None
        best_loss = np.inf
        since_best = 0
        with _single_thread():
            for epoch in range(1, self.epochs + 1):
                order = order_rng.permutation(len(fit_rows))
                loss_sum = 0.0
                correct = 0
                for start in range(0, len(order), self.batch_size):
                    rows = order[start : start + self.batch_size]
                    batch_loss, batch_correct = self._step(params, adam, X_fit[rows], y_fit[rows], w_fit[rows],
                                                           dropout_rng)
                    loss_sum += batch_loss
                    correct += batch_correct
                held_loss, held_accuracy = np.nan, np.nan
                if len(held_rows):
                    probs = _softmax(_logits(params, X_held))
                    losses = -np.log(np.clip(probs[np.arange(len(y_held)), y_held], 1e-300, None))
                    held_loss = float(np.dot(w_held, losses) / w_held.sum())
                    held_accuracy = float((probs.argmax(axis=1) == y_held).mean())
                history.append((loss_sum / len(order), correct / len(order), held_loss, held_accuracy))
                self._report(epoch, history[-1])
                if not len(held_rows):
                    continue
                if held_loss < best_loss:
                    best_loss, since_best = held_loss, 0
                    best = {name: array.copy() for name, array in params.items()}
                else:
                    since_best += 1
                    if since_best >= self.patience:
                        break
            kept = best if best is not None else params
            # Fold the standardisation into the first layer; contiguous, like the arrays np.load gives back.
            self.w1_ = np.ascontiguousarray(kept["w1"] / scale[:, None])
            self.b1_ = np.ascontiguousarray(kept["b1"] - mean @ self.w1_)
        self.w2_ = np.ascontiguousarray(kept["w2"])
        self.b2_ = np.ascontiguousarray(kept["b2"])
        self.history_ = np.array(history, dtype=np.float64).reshape(-1, len(CURVE_TAGS))
        return self

    def _step(self, params: dict[str, np.ndarray], adam: _AdamW, X: np.ndarray, y: np.ndarray, weight: np.ndarray,
              dropout_rng: np.random.Generator) -> tuple[float, int]:
        """One AdamW step on a batch; returns (the batch's summed weighted loss, rows predicted right)."""
        preactivation = X @ params["w1"] + params["b1"]
        mask = (preactivation > 0.0).astype(np.float64)  # ReLU's derivative, times inverted dropout's mask
        if self.dropout > 0.0:
            mask *= (dropout_rng.random(preactivation.shape) >= self.dropout) / (1.0 - self.dropout)
        dropped = preactivation * mask
        probs = _softmax(dropped @ params["w2"] + params["b2"])
        n = len(y)
        picked = np.clip(probs[np.arange(n), y], 1e-300, None)
        loss = float(np.dot(weight, -np.log(picked)))
        correct = int((probs.argmax(axis=1) == y).sum())
        # d(mean weighted cross-entropy) / d(logits)
        grad_logits = probs
        grad_logits[np.arange(n), y] -= 1.0
        grad_logits *= (weight / n)[:, None]
        grad_hidden = (grad_logits @ params["w2"].T) * mask
        grads = {
            "w2": dropped.T @ grad_logits,
            "b2": grad_logits.sum(axis=0),
            "w1": X.T @ grad_hidden,
            "b1": grad_hidden.sum(axis=0),
        }
        adam.step(params, grads)
        return loss, correct

    def _report(self, epoch: int, row: tuple[float, float, float, float]) -> None:
        if self.log is None:
            return
        for tag, value in zip(CURVE_TAGS, row):
            if not np.isnan(value):
                self.log(tag, value, epoch)

    @property
    def best_epoch_(self) -> int:
        """The epoch whose weights were kept (from 1): the lowest held-out loss, else the last epoch."""
        held = self.history_[:, 2]
        if len(held) and not np.isnan(held).all():
            return int(np.nanargmin(held)) + 1
        return len(self.history_)

    # -- predicting, storing, exporting ------------------------------------------------------

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        # einsum's plain loops, not BLAS: a row's result does not depend on the other rows in the batch.
        X = np.asarray(X, dtype=np.float64)
        hidden = np.maximum(np.einsum("nd,dh->nh", X, self.w1_, optimize=False) + self.b1_, 0.0)
        return _softmax(np.einsum("nh,hc->nc", hidden, self.w2_, optimize=False) + self.b2_)

    def save(self, folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {f"{name}.npy": getattr(self, f"{name}_") for name in _ARRAYS}
        arrays["history.npy"] = self.history_
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array, dtype="<f8"), allow_pickle=False)
            (folder / name).write_bytes(buffer.getvalue())
        return list(arrays)

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> MlpHead:
        head = cls(seed=meta.get("seed", 0), **cls.check_params(meta.get("params")))
        for name in _ARRAYS:
            setattr(head, f"{name}_", np.load(folder / f"{name}.npy", allow_pickle=False))
        head.history_ = np.load(folder / "history.npy", allow_pickle=False)
        w1, b1, w2, b2 = (getattr(head, f"{name}_") for name in _ARRAYS)
        if (w1.ndim != 2 or w2.ndim != 2 or b1.shape != (w1.shape[1],) or w2.shape[0] != w1.shape[1]
                or b2.shape != (w2.shape[1],) or head.history_.ndim != 2):
            raise ModelError(f"{folder}: mlp head arrays have inconsistent shapes")
        return head

    def to_onnx(self) -> onnx.ModelProto:
        dim, n_classes = self.w1_.shape[0], self.w2_.shape[1]
        initializers = [numpy_helper.from_array(getattr(self, f"{name}_").astype(np.float32), f"head_{name}")
                        for name in _ARRAYS]
        nodes = [
            helper.make_node("MatMul", [HEAD_INPUT, "head_w1"], ["head_matmul1"]),
            helper.make_node("Add", ["head_matmul1", "head_b1"], ["head_preactivation"]),
            helper.make_node("Relu", ["head_preactivation"], ["head_hidden"]),
            helper.make_node("MatMul", ["head_hidden", "head_w2"], ["head_matmul2"]),
            helper.make_node("Add", ["head_matmul2", "head_b2"], ["head_logits"]),
            helper.make_node("Softmax", ["head_logits"], [HEAD_OUTPUT], axis=1),
        ]
        return head_onnx_model("photolabel_mlp_head", nodes, initializers, dim, n_classes)


def holdout_rows(y: np.ndarray, n_classes: int, fraction: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows to train on, rows held out for early stopping), both sorted: per label, ``round(n * fraction)``
    rows chosen by ``rng``, at most ``n - 1`` so that every label keeps a training row."""
    held: list[np.ndarray] = []
    for label in range(n_classes):
        rows = np.flatnonzero(y == label)
        n_held = min(int(np.floor(len(rows) * fraction + 0.5)), max(len(rows) - 1, 0))
        held.append(rng.permutation(rows)[:n_held])
    held_rows = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    fit_rows = np.setdiff1d(np.arange(len(y)), held_rows)
    return fit_rows, held_rows


def _row_weights(sample_weight: np.ndarray | None, n_rows: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n_rows)
    weight = np.asarray(sample_weight, dtype=np.float64)
    if weight.shape != (n_rows,) or not np.isfinite(weight).all() or (weight < 0).any() or weight.sum() <= 0:
        raise DataError(f"head mlp: sample_weight must be {n_rows} finite weights >= 0, not all 0")
    return weight


def _logits(params: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """The network's logits without dropout, during training (the early-stopping hold-out)."""
    hidden = np.maximum(X @ params["w1"] + params["b1"], 0.0)
    return hidden @ params["w2"] + params["b2"]


class _AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter) on the parameters named in ``decayed``."""

    def __init__(self, params: dict[str, np.ndarray], learning_rate: float, weight_decay: float,
                 decayed: tuple[str, ...]) -> None:
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.decayed = decayed
        self.moment1 = {name: np.zeros_like(array) for name, array in params.items()}
        self.moment2 = {name: np.zeros_like(array) for name, array in params.items()}
        self.scratch = {name: np.empty_like(array) for name, array in params.items()}
        self.steps = 0

    def step(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        beta1, beta2 = _ADAM_BETAS
        self.steps += 1
        step_size = self.learning_rate / (1.0 - beta1**self.steps)
        correction2 = 1.0 - beta2**self.steps
        for name, grad in grads.items():
            m, v, update = self.moment1[name], self.moment2[name], self.scratch[name]
            # in place, into scratch arrays: the update is a few passes over each array, not a dozen copies
            m *= beta1
            np.multiply(grad, 1.0 - beta1, out=update)
            m += update
            v *= beta2
            np.multiply(grad, grad, out=update)
            update *= 1.0 - beta2
            v += update
            np.divide(v, correction2, out=update)
            np.sqrt(update, out=update)
            update += _ADAM_EPSILON
            np.divide(m, update, out=update)
            update *= step_size
            if name in self.decayed and self.weight_decay:
                params[name] *= 1.0 - self.learning_rate * self.weight_decay
            params[name] -= update
