"""The head registry: classifiers fitted on embeddings, stored without pickle.

``logistic`` (the default) is a multinomial logistic regression whose learned
state is two arrays written as ``.npy``. The scikit-learn family of seed 001
(``rf``, ``lda``, ``knn``, ``cart``, ``svm``, ``nb``) is fitted with scikit-learn
and stored as an ONNX graph converted by skl2onnx; predictions always come from
that stored graph, so the metrics describe exactly what is saved.

Every head is fitted in float64 on a single BLAS thread with a fixed seed, so the
same embeddings give the same bytes.
"""

from __future__ import annotations

import io
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from photolabel.errors import ModelError, UnknownNameError

HEAD_INPUT = "embedding"
HEAD_OUTPUT = "probabilities"
ONNX_OPSET = 17
ONNX_ML_OPSET = 3
ONNX_IR_VERSION = 8


class Head(ABC):
    """A classifier on embeddings: ``fit`` returns self, ``predict_proba`` gives (N, C)."""

    name: ClassVar[str]
    summary: ClassVar[str]

    def __init__(self, *, seed: int = 1234) -> None:
        self.seed = seed

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters, written into the model's config."""
        return {}

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> Head: ...

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.argmax(self.predict_proba(X), axis=1)

    @abstractmethod
    def save(self, folder: Path) -> list[str]:
        """Write the learned state into ``folder``; return the file names written."""

    @classmethod
    @abstractmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> Head: ...

    @abstractmethod
    def to_onnx(self) -> onnx.ModelProto:
        """Graph ``embedding`` (float32 N x D) -> ``probabilities`` (float32 N x C)."""


_HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    if cls.name in _HEADS:
        raise ValueError(f"head {cls.name!r} is already registered")
    _HEADS[cls.name] = cls
    return cls


def list_heads() -> list[str]:
    return sorted(_HEADS)


def describe_heads() -> dict[str, str]:
    return {name: _HEADS[name].summary for name in list_heads()}


def get_head_class(name: str) -> type[Head]:
    if name not in _HEADS:
        raise UnknownNameError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}")
    return _HEADS[name]


def make_head(name: str, *, seed: int) -> Head:
    return get_head_class(name)(seed=seed)


def _single_thread() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def _standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale < 1e-12] = 1.0
    return mean, scale


@register_head
class LogisticHead(Head):
    """Multinomial logistic regression (L2, lbfgs) on standardised embeddings."""

    name = "logistic"
    summary = "multinomial logistic regression (default): fast, calibrated, exportable"

    def __init__(self, *, seed: int = 1234, C: float = 1.0, max_iter: int = 2000) -> None:
        super().__init__(seed=seed)
        self.C = C
        self.max_iter = max_iter

    def get_params(self) -> dict[str, Any]:
        return {"C": self.C, "max_iter": self.max_iter}

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, dtype=np.float64)
        mean, scale = _standardise(X)
        with _single_thread():
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=self.seed)
            model.fit((X - mean) / scale, y)
        coef = np.asarray(model.coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        if n_classes == 2 and coef.shape[0] == 1:
            # sigmoid(z) == softmax([0, z]): store binary models in the same C-row form.
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        # Fold the standardisation into the weights: one affine map, then softmax.
        # Contiguous, like the arrays np.load gives back: BLAS may round differently otherwise.
        self.coef_ = np.ascontiguousarray(coef / scale)
        self.intercept_ = np.ascontiguousarray(intercept - self.coef_ @ mean)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        # einsum's plain loops, not BLAS: a row's result does not depend on the other rows in the
        # batch (BLAS blocking does), so micro-batched predictions equal one-by-one ones bit for bit.
        logits = np.einsum("nd,cd->nc", np.asarray(X, dtype=np.float64), self.coef_, optimize=False)
        return _softmax(logits + self.intercept_)

    def save(self, folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("coef.npy", self.coef_), ("intercept.npy", self.intercept_)):
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(array, dtype="<f8"), allow_pickle=False)
            (folder / name).write_bytes(buffer.getvalue())
        return ["coef.npy", "intercept.npy"]

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> LogisticHead:
        head = cls(seed=meta.get("seed", 0), **meta.get("params", {}))
        head.coef_ = np.load(folder / "coef.npy", allow_pickle=False)
        head.intercept_ = np.load(folder / "intercept.npy", allow_pickle=False)
        if head.coef_.ndim != 2 or head.intercept_.shape != (head.coef_.shape[0],):
            raise ModelError(f"{folder}: logistic head arrays have inconsistent shapes")
        return head

    def to_onnx(self) -> onnx.ModelProto:
        n_classes, dim = self.coef_.shape
        weight = numpy_helper.from_array(self.coef_.T.astype(np.float32), "head_weight")
        bias = numpy_helper.from_array(self.intercept_.astype(np.float32), "head_bias")
        nodes = [
            helper.make_node("MatMul", [HEAD_INPUT, "head_weight"], ["head_matmul"]),
            helper.make_node("Add", ["head_matmul", "head_bias"], ["head_logits"]),
            helper.make_node("Softmax", ["head_logits"], [HEAD_OUTPUT], axis=1),
        ]
        graph = helper.make_graph(
            nodes,
            "photolabel_logistic_head",
            [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])],
            [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", n_classes])],
            initializer=[weight, bias],
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="photolabel"
        )
        model.ir_version = ONNX_IR_VERSION
        return model


class SklearnOnnxHead(Head):
    """A scikit-learn estimator (after standardisation), stored as ONNX via skl2onnx."""

    def make_estimator(self) -> Any:
        raise NotImplementedError

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int) -> SklearnOnnxHead:
        from skl2onnx import to_onnx
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        X = np.asarray(X, dtype=np.float64)
        estimator = self.make_estimator()
        pipeline = Pipeline([("scale", StandardScaler()), ("classify", estimator)])
        with _single_thread(), warnings.catch_warnings():
            # SVC(probability=True) warns of its deprecation in scikit-learn 1.9; pinned < 1.11.
            warnings.simplefilter("ignore", FutureWarning)
            pipeline.fit(X, y)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            onnx_model = to_onnx(
                pipeline,
                X[:1].astype(np.float32),
                options={id(estimator): {"zipmap": False}},
                target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET},
            )
        self.onnx_bytes_ = _normalise_sklearn_onnx(onnx_model, X.shape[1]).SerializeToString()
        self._session = None
        return self

    @property
    def session(self) -> Any:
        if getattr(self, "_session", None) is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            self._session = ort.InferenceSession(self.onnx_bytes_, options, providers=["CPUExecutionProvider"])
        return self._session

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run([HEAD_OUTPUT], {HEAD_INPUT: np.asarray(X, dtype=np.float32)})
        return np.asarray(probs, dtype=np.float64)

    def save(self, folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "head.onnx").write_bytes(self.onnx_bytes_)
        return ["head.onnx"]

    @classmethod
    def load(cls, folder: Path, meta: dict[str, Any]) -> SklearnOnnxHead:
        head = cls(seed=meta.get("seed", 0))
        head.onnx_bytes_ = (folder / "head.onnx").read_bytes()
        head._session = None
        return head

    def to_onnx(self) -> onnx.ModelProto:
        return onnx.load_from_string(self.onnx_bytes_)


def _normalise_sklearn_onnx(model: onnx.ModelProto, dim: int) -> onnx.ModelProto:
    """Rename skl2onnx's input/outputs to ours and keep only the probabilities output."""
    graph = model.graph
    old_input = graph.input[0].name
    prob_outputs = [o for o in graph.output if "prob" in o.name]
    if not prob_outputs:
        raise ModelError("skl2onnx produced no probabilities output")
    old_output = prob_outputs[0].name
    for node in graph.node:
        node.input[:] = [HEAD_INPUT if n == old_input else n for n in node.input]
        node.output[:] = [HEAD_OUTPUT if n == old_output else n for n in node.output]
    graph.input[0].name = HEAD_INPUT
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    graph.input[0].type.tensor_type.shape.dim[1].dim_value = dim
    kept = [o for o in graph.output if o.name == old_output]
    kept[0].name = HEAD_OUTPUT
    del graph.output[:]
    graph.output.extend(kept)
    graph.name = "photolabel_sklearn_head"
    model.producer_name = "photolabel+skl2onnx"
    model.producer_version = ""
    model.doc_string = ""
    model.ir_version = ONNX_IR_VERSION
    _canonical_names(model)
    return model


def _canonical_names(model: onnx.ModelProto) -> None:
    """Rename internal tensors and nodes by position.

    skl2onnx numbers some names with a process-wide counter (KNN's cdist), so the
    same estimator converted twice in one process would give different bytes.
    """
    top = model.graph
    keep = {value.name for value in top.input} | {value.name for value in top.output}
    mapping: dict[str, str] = {}
    counter = [0]

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in mapping:
            mapping[name] = f"t{len(mapping)}"
        return mapping[name]

    def walk(graph: onnx.GraphProto, nested: bool) -> None:
        if nested:
            for value in list(graph.input) + list(graph.output):
                value.name = rename(value.name)
        for value in graph.value_info:
            value.name = rename(value.name)
        for tensor in graph.initializer:
            tensor.name = rename(tensor.name)
        for node in graph.node:
            node.input[:] = [rename(n) for n in node.input]
            node.output[:] = [rename(n) for n in node.output]
            node.name = f"n{counter[0]}"
            counter[0] += 1
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    walk(attribute.g, True)
                for sub in attribute.graphs:
                    walk(sub, True)

    walk(top, False)


def _sklearn_head(name: str, summary: str, build: Callable[[int], Any]) -> type[Head]:
    head_cls = type(
        f"{name.capitalize()}Head",
        (SklearnOnnxHead,),
        {"name": name, "summary": summary, "make_estimator": lambda self: build(self.seed)},
    )
    return register_head(head_cls)


def _rf(seed: int) -> Any:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=1)


def _lda(seed: int) -> Any:
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")


def _knn(seed: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=5, algorithm="brute")


def _cart(seed: int) -> Any:
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(random_state=seed)


def _svm(seed: int) -> Any:
    from sklearn.svm import SVC

    return SVC(kernel="rbf", probability=True, random_state=seed)


def _nb(seed: int) -> Any:
    from sklearn.naive_bayes import GaussianNB

    return GaussianNB()


_sklearn_head("rf", "random forest, 100 trees (seed 001's default)", _rf)
_sklearn_head("lda", "linear discriminant analysis with shrinkage", _lda)
_sklearn_head("knn", "5 nearest neighbours", _knn)
_sklearn_head("cart", "a single decision tree", _cart)
_sklearn_head("svm", "RBF support vector machine with Platt-scaled probabilities", _svm)
_sklearn_head("nb", "Gaussian naive Bayes", _nb)
