"""The two settings objects every entry point builds and hands to the core.

* :class:`TrainConfig`: everything that determines a model besides its images. It is
  written into ``model.json`` and hashed into the model id. Its defaults are written
  here and nowhere else; adapters read them from :data:`TRAIN_DEFAULTS`.
* :class:`Runtime`: everything that must never change a result: threads, batch size,
  caches, limits, progress display.

Both are frozen and checked once, when built: a bad value raises
:class:`~photolabel.errors.ConfigError` naming the field, whatever surface it came from
(the CLI maps it to exit 2, the service to 422, the worker to ``ok: false``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photolabel.errors import ConfigError
from photolabel.fetch import DEFAULT_FETCH_OPTIONS, FetchOptions
from photolabel.images import DEFAULT_MAX_PIXELS
from photolabel.limits import DEFAULT_ARCHIVE_LIMITS, DEFAULT_CSV_LIMITS, ArchiveLimits, CsvLimits

MAX_SEED = 2**32 - 1  # scikit-learn's random_state range
MAX_THREADS = 256
MAX_BATCH_SIZE = 4096
MAX_AUGMENT = 16
PRESETS = (None, "best")


@dataclass(frozen=True)
class TrainConfig:
    """What determines a model besides its images. Written into model.json; hashed into model_id.

    ``head_params`` holds every hyperparameter of the head once checked (the defaults of
    those not given included), so changing a built-in default changes the model id.
    ``classes`` fixes the label order (None: sorted label names); in a trained model's
    card it is the resolved label order.

    ``augment``: K augmented views of each training image (0: none). ``finetune``: tune the
    backbone's last blocks too. ``max_per_label``: keep at most N images per label (0: the
    smallest label's count; None: all). ``balance``: weight classes inversely to their
    counts. ``calibrate``: fit a temperature on validation. ``unknown``: answer "unknown"
    for images far from the training data or below a confidence threshold chosen on
    validation. ``tune``: choose the head's parameters by k-fold cross-validation;
    ``preset="best"`` searches heads, augmentation and fine-tuning too.
    """

    backbone: str = "efficientnet-lite1"  # chosen on the selection halves: benchmarks/choose_defaults.py
    head: str = "logistic"
    head_params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 1234
    valid_fraction: float = 0.1
    classes: tuple[str, ...] | None = None
    augment: int = 0
    finetune: bool = False
    max_per_label: int | None = None
    balance: bool = False
    calibrate: bool = True
    unknown: bool = True
    tune: bool = False
    preset: str | None = None

    def __post_init__(self) -> None:
        from photolabel.backbones import check_backbone_name
        from photolabel.heads import get_head_class

        check_backbone_name(self.backbone)
        head_cls = get_head_class(self.head)
        _set(self, "seed", _check_int("seed", self.seed, 0, MAX_SEED))
        _set(self, "valid_fraction", _check_fraction(self.valid_fraction))
        if not isinstance(self.head_params, Mapping):
            raise ConfigError(f"head_params must be a mapping of name to value, got {self.head_params!r}",
                              field="head_params")
        _set(self, "head_params", head_cls.check_params(self.head_params))
        _set(self, "classes", _check_classes(self.classes))
        _set(self, "augment", _check_int("augment", self.augment, 0, MAX_AUGMENT))
        if self.max_per_label is not None:
            _set(self, "max_per_label", _check_int("max_per_label", self.max_per_label, 0, 10**9))
        for name in ("finetune", "balance", "calibrate", "unknown", "tune"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}", field=name)
        if self.finetune:
            from photolabel.finetune import check_finetunable

            check_finetunable(self.backbone)
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {', '.join(str(p) for p in PRESETS if p)}, got {self.preset!r}",
                              field="preset")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied, checked again. Changing the head resets its parameters
        unless ``head_params`` is given too."""
        if "head" in changes and changes["head"] != self.head and "head_params" not in changes:
            changes["head_params"] = {}
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written into model.json (and hashed)."""
        return {
            "backbone": self.backbone,
            "head": self.head,
            "head_params": dict(self.head_params),
            "seed": self.seed,
            "valid_fraction": self.valid_fraction,
            "classes": list(self.classes) if self.classes is not None else None,
            "augment": self.augment,
            "finetune": self.finetune,
            "max_per_label": self.max_per_label,
            "balance": self.balance,
            "calibrate": self.calibrate,
            "unknown": self.unknown,
            "tune": self.tune,
            "preset": self.preset,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config a ``to_dict`` (or an older model.json without the newer keys) describes; unknown keys
        are ignored. A feature whose key is missing did not exist when it was written: it is off."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known and value is not None}
        for switched_on_by_default in ("calibrate", "unknown"):
            values.setdefault(switched_on_by_default, False)
        if "classes" in values:
            values["classes"] = tuple(values["classes"])
        return cls(**values)


@dataclass(frozen=True)
class Runtime:
    """How to run, never what comes out: the same TrainConfig and images give the same model
    whatever these are (tested for threads, batch size and a cold or warm cache).

    ``cache_dir`` None means ``PHOTOLABEL_CACHE_DIR`` as the adapter read it, else
    ``~/.cache/photolabel``; ``threads`` None means every core. ``tensorboard_dir``: where a head that
    trains in epochs writes TensorBoard curves (None: nowhere). ``archive_limits`` and ``csv_limits``
    cap the archives and CSV manifests a data set is read from (see :mod:`photolabel.limits`).
    """

    threads: int | None = None
    batch_size: int = 32
    cache_dir: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    fetch: FetchOptions = DEFAULT_FETCH_OPTIONS
    progress: bool = False
    tensorboard_dir: Path | None = None
    archive_limits: ArchiveLimits = DEFAULT_ARCHIVE_LIMITS
    csv_limits: CsvLimits = DEFAULT_CSV_LIMITS

    def __post_init__(self) -> None:
        if self.threads is not None:
            _set(self, "threads", _check_int("threads", self.threads, 1, MAX_THREADS))
        _set(self, "batch_size", _check_int("batch_size", self.batch_size, 1, MAX_BATCH_SIZE))
        _set(self, "max_pixels", _check_int("max_pixels", self.max_pixels, 1, 2**40))
        if self.cache_dir is not None:
            _set(self, "cache_dir", Path(self.cache_dir))
        if self.tensorboard_dir is not None:
            _set(self, "tensorboard_dir", Path(self.tensorboard_dir))
        if not isinstance(self.fetch, FetchOptions):
            raise ConfigError(f"fetch must be FetchOptions, got {type(self.fetch).__name__}", field="fetch")
        if not isinstance(self.archive_limits, ArchiveLimits):
            raise ConfigError(f"archive_limits must be ArchiveLimits, got {type(self.archive_limits).__name__}",
                              field="archive_limits")
        if not isinstance(self.csv_limits, CsvLimits):
            raise ConfigError(f"csv_limits must be CsvLimits, got {type(self.csv_limits).__name__}",
                              field="csv_limits")

    def replace(self, **changes: Any) -> Runtime:
        return dataclasses.replace(self, **changes)

    @property
    def workers(self) -> int:
        """Decode threads: ``threads``, or 2 when unset."""
        return self.threads or 2


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ConfigError(f"{name} must be a whole number in {low}..{high}, got {value!r}", field=name)
    if not low <= value <= high:
        raise ConfigError(f"{name} must be in {low}..{high}, got {value}", field=name)
    return value


def _check_fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigError(f"valid_fraction must be a number in [0, 1), got {value!r}", field="valid_fraction")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"valid_fraction must be in [0, 1) (the share of each label held out for validation), "
                          f"got {value}", field="valid_fraction")
    return float(value)


def _check_classes(classes: Sequence[str] | None) -> tuple[str, ...] | None:
    if classes is None:
        return None
    if isinstance(classes, str):
        raise ConfigError("classes must be a list of label names, not one string", field="classes")
    names = tuple(classes)
    if not names:
        return None
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"classes: {name!r} is not a label name", field="classes")
        if name in seen:
            raise ConfigError(f"classes: '{name}' is listed twice", field="classes")
        seen.add(name)
    return names


def merge_overrides(base: Any, **overrides: Any) -> Any:
    """``base`` (a TrainConfig or Runtime) with the overrides that are not None applied."""
    given = {key: value for key, value in overrides.items() if value is not None}
    return base.replace(**given) if given else base


#: the defaults, for adapters that show them (``--help``, the API schema)
TRAIN_DEFAULTS = TrainConfig()
RUNTIME_DEFAULTS = Runtime()
