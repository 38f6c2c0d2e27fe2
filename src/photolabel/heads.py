"""The head registry: classifiers fitted on embeddings, stored without pickle.

``logistic`` (the default) is a multinomial logistic regression whose learned
state is two arrays written as ``.npy``. The scikit-learn family of the Golem image classifier
(``rf``, ``lda``, ``knn``, ``cart``, ``svm``, ``nb``) is fitted with scikit-learn
and stored as an ONNX graph converted by skl2onnx; predictions always come from
that stored graph, so the metrics describe exactly what is saved.

Every head is fitted in float64 on a single BLAS thread with a fixed seed, so the
same embeddings give the same bytes.
"""

from __future__ import annotations

import inspect
import io
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from photolabel.errors import ConfigError, DataError, ModelError, UnknownNameError

HEAD_INPUT = "embedding"
HEAD_OUTPUT = "probabilities"
ONNX_OPSET = 17
ONNX_ML_OPSET = 3
ONNX_IR_VERSION = 8


@dataclass(frozen=True)
class Param:
    """What values a head hyperparameter accepts (scikit-learn's ``_parameter_constraints`` habit).

    ``kind`` is int, float, str or bool. Numbers must lie in ``[low, high]`` (an end is
    open when ``low_open``/``high_open``); ``choices`` lists accepted words (for a str
    parameter, the only values; for a number, words accepted besides numbers, such as
    ``"auto"``); ``none`` accepts None (written ``none`` on a command line).
    """

    kind: type
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    none: bool = False

    def describe(self) -> str:
        """The accepted values in words: ``float in (0, inf)``, ``one of rbf, linear``, ..."""
        parts: list[str] = []
        if self.kind in (int, float):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            left = "(" if self.low_open or self.low is None else "["
            right = ")" if self.high_open or self.high is None else "]"
            parts.append(f"{self.kind.__name__} in {left}{low}, {high}{right}")
        elif self.kind is bool:
            parts.append("true or false")
        if self.choices:
            parts.append(("one of " if self.kind is str else "") + ", ".join(self.choices))
        if self.none:
            parts.append("none")
        return " or ".join(parts)

    def check(self, name: str, value: Any) -> Any:
        """``value`` (a Python value, or text from a command line or a form) in its checked, typed form.

        Raises:
            ConfigError: the value has the wrong type or lies outside the range; the message
                names the parameter and says what it accepts.
        """
        given = value  # errors show what was given, not its converted form
        if isinstance(value, str):
            value = self._parse(name, value.strip())
        if value is None:
            if self.none:
                return None
            raise self._error(name, given)
        if isinstance(value, str):
            if value in self.choices:
                return value
            raise self._error(name, given)
        if self.kind is bool:
            if isinstance(value, bool):
                return value
            raise self._error(name, given)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or self.kind is str:
            raise self._error(name, given)
        if self.kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise self._error(name, given)
            value = int(value)
        else:
            value = float(value)
            if value != value:  # NaN
                raise self._error(name, given)
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise self._error(name, given)
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise self._error(name, given)
        return value

    def _parse(self, name: str, text: str) -> Any:
        if self.none and text.lower() in ("none", "null"):
            return None
        if text in self.choices:
            return text
        if self.kind is bool:
            lowered = text.lower()
            if lowered in ("true", "yes", "1", "on"):
                return True
            if lowered in ("false", "no", "0", "off"):
                return False
            raise self._error(name, text)
        if self.kind in (int, float):
            try:
                return float(text) if self.kind is float or not text.lstrip("+-").isdigit() else int(text)
            except ValueError:
                raise self._error(name, text) from None
        return text

    def _error(self, name: str, value: Any) -> ConfigError:
        shown = value if isinstance(value, str) else repr(value)
        return ConfigError(f"head parameter {name}={shown}: expected {self.describe()}", field=name)


ScalarLog = Callable[[str, float, int], None]


class Head(ABC):
    """A classifier on embeddings: ``fit`` returns self, ``predict_proba`` gives (N, C).

    Hyperparameters are the keyword arguments of ``__init__`` besides ``seed``, each with
    a :class:`Param` in ``constraints``; :meth:`get_params` reads them back (scikit-learn's
    habit). ``version`` changes whenever a head's fitting or storage changes what a model
    holds; it enters the model id, as a backbone's hash does.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    version: ClassVar[int] = 1
    constraints: ClassVar[dict[str, Param]] = {}
    #: the values ``tune``/``preset="best"`` try for each searched hyperparameter, in tie-break order
    #: (see :mod:`photolabel.tuning`); empty: nothing to tune, the given parameters are used
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {}
    #: where a head that trains in epochs reports its curves, ``log(tag, value, step)`` (TensorBoard's
    #: ``EventWriter.scalar``); set by the caller, never stored: it must not change what is fitted
    log: ScalarLog | None = None

    def __init__(self, *, seed: int = 1234) -> None:
        self.seed = seed

    @classmethod
    def param_names(cls) -> list[str]:
        """The hyperparameters, from ``__init__``'s signature, in their written order."""
        signature = inspect.signature(cls.__init__)
        return [name for name, p in signature.parameters.items()
                if name not in ("self", "seed") and p.kind is inspect.Parameter.KEYWORD_ONLY]

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        signature = inspect.signature(cls.__init__)
        return {name: signature.parameters[name].default for name in cls.param_names()}

    @classmethod
    def check_params(cls, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Every hyperparameter, given ones checked and typed, the others at their defaults.

        Raises:
            ConfigError: an unknown name (the message lists the known ones) or a bad value.
        """
        params = cls.default_params()
        for name, value in (given or {}).items():
            if name not in params:
                known = ", ".join(params) or "none"
                raise ConfigError(f"head {cls.name!r} has no parameter {name!r}; its parameters: {known}",
                                  field=name)
            params[name] = cls.constraints[name].check(name, value)
        return params

    def get_params(self) -> dict[str, Any]:
        """Hyperparameters (defaults included), written into model.json and hashed into the model id."""
        return {name: getattr(self, name) for name in self.param_names()}

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int, *, sample_weight: np.ndarray | None = None) -> Head:
        """Fit on embeddings ``X`` (N, D) and label indices ``y``; ``sample_weight`` (N,) weights rows
        (class balancing). Raises ConfigError when the head cannot weight rows."""

    @abstractmethod
    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    def fit_for_search(self, X: np.ndarray, y: np.ndarray, n_classes: int, *,
                       sample_weight: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """Fit as ``fit`` does and return the probabilities function that scores this candidate in a
        cross-validated search (:mod:`photolabel.tuning`). By default ``predict_proba`` itself; a head whose
        stored form is slow to build may skip building it and answer from its in-memory state, if the
        answers agree with the stored form's up to float32 rounding."""
        self.fit(X, y, n_classes, sample_weight=sample_weight)
        return self.predict_proba

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
    """Class decorator: make ``cls`` available under ``cls.name``.

    Raises ``ValueError`` for a taken name, a hyperparameter without a :class:`Param`, or a
    ``tune_grid`` entry that is not a hyperparameter or holds a value its Param refuses.
    """
    if cls.name in _HEADS:
        raise ValueError(f"head {cls.name!r} is already registered")
    missing = [name for name in cls.param_names() if name not in cls.constraints]
    if missing:
        raise ValueError(f"head {cls.name!r}: no Param in constraints for {', '.join(missing)}")
    for name, values in cls.tune_grid.items():
        if name not in cls.constraints or not values:
            raise ValueError(f"head {cls.name!r}: tune_grid entry {name!r} is not a hyperparameter or is empty")
        for value in values:
            cls.constraints[name].check(name, value)  # a ConfigError (a ValueError) names the bad value
    _HEADS[cls.name] = cls
    return cls


def list_heads() -> list[str]:
    return sorted(_HEADS)


def describe_heads() -> dict[str, str]:
    return {name: _HEADS[name].summary for name in list_heads()}


def get_head_class(name: str) -> type[Head]:
    """The head class registered as ``name``.

    Raises:
        UnknownNameError: no such head; the message lists the known ones.
    """
    if name not in _HEADS:
        raise UnknownNameError(f"unknown head {name!r}; known heads: {', '.join(list_heads())}", field="head")
    return _HEADS[name]


def make_head(name: str, *, seed: int, params: Mapping[str, Any] | None = None) -> Head:
    """An unfitted head ``name`` with ``params`` (checked; missing ones at their defaults)."""
    cls = get_head_class(name)
    return cls(seed=seed, **cls.check_params(params))


def _single_thread() -> Any:
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def head_onnx_model(name: str, nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto], dim: int,
                    n_classes: int) -> onnx.ModelProto:
    """A head's graph ``embedding`` (float32 N x dim) -> ``probabilities`` (float32 N x n_classes) from its nodes."""
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info(HEAD_INPUT, TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info(HEAD_OUTPUT, TensorProto.FLOAT, ["batch", n_classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="photolabel")
    model.ir_version = ONNX_IR_VERSION
    return model


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
    constraints: ClassVar[dict[str, Param]] = {
        "C": Param(float, "inverse of the L2 regularisation strength", low=0.0, low_open=True),
        "max_iter": Param(int, "most lbfgs iterations", low=1, high=1_000_000),
    }
    # half-decades, strongest regularisation first: a tie goes to the simpler model
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {
        "C": (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0),
    }

    def __init__(self, *, seed: int = 1234, C: float = 1.0, max_iter: int = 2000) -> None:
        super().__init__(seed=seed)
        self.C = C
        self.max_iter = max_iter

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int, *,
            sample_weight: np.ndarray | None = None) -> LogisticHead:
        from sklearn.linear_model import LogisticRegression

        X = np.asarray(X, dtype=np.float64)
        mean, scale = _standardise(X)
        with _single_thread():
            model = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="lbfgs", random_state=self.seed)
            model.fit((X - mean) / scale, y, sample_weight=sample_weight)
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
        head = cls(seed=meta.get("seed", 0), **cls.check_params(meta.get("params")))
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
        return head_onnx_model("photolabel_logistic_head", nodes, [weight, bias], dim, n_classes)


class SklearnOnnxHead(Head):
    """A scikit-learn estimator (after standardisation), stored as ONNX via skl2onnx."""

    @abstractmethod
    def make_estimator(self) -> Any:
        """The scikit-learn estimator, configured from this head's hyperparameters and seed."""

    def fit(self, X: np.ndarray, y: np.ndarray, n_classes: int, *,
            sample_weight: np.ndarray | None = None) -> SklearnOnnxHead:
        from skl2onnx import to_onnx

        X = np.asarray(X, dtype=np.float64)
        pipeline = self._fit_pipeline(X, y, sample_weight)
        estimator = pipeline.named_steps["classify"]
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

    def fit_for_search(self, X: np.ndarray, y: np.ndarray, n_classes: int, *,
                       sample_weight: np.ndarray | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """The fitted scikit-learn pipeline's probabilities, without the ONNX conversion (most of the cost of
        fitting a small estimator); the stored graph gives the same answers on float32 inputs."""
        pipeline = self._fit_pipeline(np.asarray(X, dtype=np.float64), y, sample_weight)

        def predict_proba(rows: np.ndarray) -> np.ndarray:
            with _single_thread():
                return np.asarray(pipeline.predict_proba(np.asarray(rows, dtype=np.float32).astype(np.float64)),
                                  dtype=np.float64)

        return predict_proba

    def _fit_pipeline(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> Any:
        """Standardisation then ``make_estimator()``, fitted on one thread.

        Raises:
            ConfigError: ``sample_weight`` given to an estimator that cannot weight rows.
        """
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.utils.validation import has_fit_parameter

        estimator = self.make_estimator()
        pipeline = Pipeline([("scale", StandardScaler()), ("classify", estimator)])
        fit_params: dict[str, Any] = {}
        if sample_weight is not None:
            if not has_fit_parameter(estimator, "sample_weight"):
                raise ConfigError(f"head {self.name} cannot weight classes; keep at most as many images per label "
                                  "instead (max_per_label)", field="balance")
            fit_params["classify__sample_weight"] = sample_weight
        with _single_thread(), warnings.catch_warnings():
            # SVC(probability=True) warns of its deprecation in scikit-learn 1.9; pinned < 1.11.
            warnings.simplefilter("ignore", FutureWarning)
            try:
                pipeline.fit(X, y, **fit_params)
            except ValueError as exc:  # e.g. lda with fewer training images than labels
                raise DataError(f"head {self.name} cannot be fitted on these {len(X)} training images: "
                                f"{' '.join(str(exc).split())}") from None
        return pipeline

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
        head = cls(seed=meta.get("seed", 0), **cls.check_params(meta.get("params")))
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


_POSITIVE = {"low": 0.0, "low_open": True}


@register_head
class RfHead(SklearnOnnxHead):
    name = "rf"
    summary = "random forest"
    constraints: ClassVar[dict[str, Param]] = {
        "n_estimators": Param(int, "trees", low=1, high=10_000),
        "max_depth": Param(int, "deepest split; none: grow until pure", low=1, high=1_000, none=True),
        "min_samples_leaf": Param(int, "fewest training images in a leaf", low=1, high=100_000),
    }
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"max_depth": (8, None), "min_samples_leaf": (4, 1)}

    def __init__(self, *, seed: int = 1234, n_estimators: int = 100, max_depth: int | None = None,
                 min_samples_leaf: int = 1) -> None:
        super().__init__(seed=seed)
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf

    def make_estimator(self) -> Any:
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(n_estimators=self.n_estimators, max_depth=self.max_depth,
                                      min_samples_leaf=self.min_samples_leaf, random_state=self.seed, n_jobs=1)


@register_head
class LdaHead(SklearnOnnxHead):
    name = "lda"
    summary = "linear discriminant analysis with shrinkage"
    constraints: ClassVar[dict[str, Param]] = {
        "shrinkage": Param(float, "covariance shrinkage; auto: Ledoit-Wolf", low=0.0, high=1.0, choices=("auto",),
                           none=True),
    }
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"shrinkage": ("auto", 0.1, 0.5, 0.9)}

    def __init__(self, *, seed: int = 1234, shrinkage: float | str | None = "auto") -> None:
        super().__init__(seed=seed)
        self.shrinkage = shrinkage

    def make_estimator(self) -> Any:
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

        return LinearDiscriminantAnalysis(solver="lsqr", shrinkage=self.shrinkage)


@register_head
class KnnHead(SklearnOnnxHead):
    name = "knn"
    summary = "k nearest neighbours"
    constraints: ClassVar[dict[str, Param]] = {
        "n_neighbors": Param(int, "neighbours that vote (each one vote: the stored ONNX graph cannot weight "
                                  "votes by distance)", low=1, high=10_000),
    }
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"n_neighbors": (3, 5, 9, 15, 25)}

    def __init__(self, *, seed: int = 1234, n_neighbors: int = 5) -> None:
        super().__init__(seed=seed)
        self.n_neighbors = n_neighbors

    def make_estimator(self) -> Any:
        from sklearn.neighbors import KNeighborsClassifier

        return KNeighborsClassifier(n_neighbors=self.n_neighbors, algorithm="brute")

    def _fit_pipeline(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None) -> Any:
        if self.n_neighbors > len(X):
            raise DataError(f"head knn: n_neighbors={self.n_neighbors} but only {len(X)} training images")
        return super()._fit_pipeline(X, y, sample_weight)


@register_head
class CartHead(SklearnOnnxHead):
    name = "cart"
    summary = "a single decision tree"
    constraints: ClassVar[dict[str, Param]] = {
        "max_depth": RfHead.constraints["max_depth"],
        "min_samples_leaf": RfHead.constraints["min_samples_leaf"],
    }
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"max_depth": (3, 6, 12, None), "min_samples_leaf": (5, 1)}

    def __init__(self, *, seed: int = 1234, max_depth: int | None = None, min_samples_leaf: int = 1) -> None:
        super().__init__(seed=seed)
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf

    def make_estimator(self) -> Any:
        from sklearn.tree import DecisionTreeClassifier

        return DecisionTreeClassifier(max_depth=self.max_depth, min_samples_leaf=self.min_samples_leaf,
                                      random_state=self.seed)


@register_head
class SvmHead(SklearnOnnxHead):
    name = "svm"
    summary = "support vector machine with Platt-scaled probabilities"
    constraints: ClassVar[dict[str, Param]] = {
        "C": Param(float, "inverse regularisation strength", **_POSITIVE),
        "kernel": Param(str, "kernel", choices=("rbf", "linear", "poly", "sigmoid")),
        "gamma": Param(float, "kernel coefficient; scale: 1 / (dims x variance)", choices=("scale", "auto"),
                       **_POSITIVE),
    }
    # gamma "scale" is 1 / dims on standardised embeddings (about 0.0008 for 1280-d ones)
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"C": (0.1, 1.0, 10.0, 100.0),
                                                       "gamma": ("scale", 0.0001, 0.01)}

    def __init__(self, *, seed: int = 1234, C: float = 1.0, kernel: str = "rbf", gamma: float | str = "scale"
                 ) -> None:
        super().__init__(seed=seed)
        self.C = C
        self.kernel = kernel
        self.gamma = gamma

    def make_estimator(self) -> Any:
        from sklearn.svm import SVC

        return SVC(C=self.C, kernel=self.kernel, gamma=self.gamma, probability=True, random_state=self.seed)


@register_head
class NbHead(SklearnOnnxHead):
    name = "nb"
    summary = "Gaussian naive Bayes"
    constraints: ClassVar[dict[str, Param]] = {
        "var_smoothing": Param(float, "share of the largest variance added to every variance", low=0.0),
    }
    tune_grid: ClassVar[dict[str, tuple[Any, ...]]] = {"var_smoothing": (1e-9, 1e-6, 1e-3, 0.01, 0.1, 1.0)}

    def __init__(self, *, seed: int = 1234, var_smoothing: float = 1e-9) -> None:
        super().__init__(seed=seed)
        self.var_smoothing = var_smoothing

    def make_estimator(self) -> Any:
        from sklearn.naive_bayes import GaussianNB

        return GaussianNB(var_smoothing=self.var_smoothing)


# Heads in their own modules register themselves when imported; importing them here makes every
# head known wherever the registry is used.
from photolabel import mlp as _mlp  # noqa: E402, F401
