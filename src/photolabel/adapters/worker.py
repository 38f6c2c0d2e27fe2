"""``photolabel worker``: the Golem image classifier service's long-lived classifier driven through stdin/stdout.

Started with ``-d DATASET -c CLASS...`` it trains (or, for data and settings it has
seen before, loads the content-addressed model at once), prints one ready line, then
answers one command per line, flushed at once:

    predict IMAGE                   -> the label (the Golem service prints the label alone); "unknown" for an
                                       image unlike the training images or one the model is unsure of
    train TRAIN.tar.gz VALID.tar.gz -> adds the images, retrains, "Model Successfully Trained <id>"
    info | help | quit              (EOF also ends the session)

With ``--json`` every answer is one JSON object. Bad input gives an error line and
the worker keeps serving the model it had: a retrain is written under a temporary
name and only becomes the active model once it is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from photolabel.config import TRAIN_DEFAULTS, Runtime, TrainConfig
from photolabel.dataset import Dataset
from photolabel.errors import PhotolabelError, SourceNotFoundError
from photolabel.model import Model, load_model

READY_TEXT = "ready"
TRAINED_TEXT = "Model Successfully Trained"
HELP_TEXT = (
    "commands: predict IMAGE | train TRAIN.tar.gz VALID.tar.gz | info | help | quit"
)


class CommandError(PhotolabelError, ValueError):
    code = "bad_command"


@dataclass
class WorkerSettings:
    """The worker's options as given; :meth:`train_config` and :meth:`runtime` check them."""

    dataset: str
    classes: tuple[str, ...]
    work_dir: Path = Path("photolabel-worker")
    seed: int = TRAIN_DEFAULTS.seed
    backbone: str = TRAIN_DEFAULTS.backbone
    head: str = TRAIN_DEFAULTS.head
    head_params: dict[str, Any] = field(default_factory=dict)
    valid_fraction: float = TRAIN_DEFAULTS.valid_fraction
    augment: int = TRAIN_DEFAULTS.augment
    calibrate: bool = TRAIN_DEFAULTS.calibrate
    unknown: bool = TRAIN_DEFAULTS.unknown
    max_per_label: int | None = TRAIN_DEFAULTS.max_per_label
    balance: bool = TRAIN_DEFAULTS.balance
    tune: bool = TRAIN_DEFAULTS.tune
    preset: str | None = TRAIN_DEFAULTS.preset
    threads: int | None = None
    cache_dir: Path | None = None

    def train_config(self) -> TrainConfig:
        """Raises ConfigError for a bad setting (the worker's first answer, then)."""
        return TrainConfig(backbone=self.backbone, head=self.head, head_params=self.head_params, seed=self.seed,
                           valid_fraction=self.valid_fraction, classes=self.classes or None, augment=self.augment,
                           calibrate=self.calibrate, unknown=self.unknown, max_per_label=self.max_per_label,
                           balance=self.balance, tune=self.tune, preset=self.preset)

    def runtime(self) -> Runtime:
        return Runtime(threads=self.threads, cache_dir=self.cache_dir)


def resolve_dataset(name: str, cwd: Path | None = None) -> Path | str:
    """A path to a folder or archive, a storage URI (kept as it is), or the Golem service's bare name for
    ``NAME.tar.gz`` in the working directory."""
    from photolabel import storage

    if not storage.is_local(name):
        return name
    base = cwd or Path.cwd()
    path = base / name
    if path.exists():
        return path
    archive = base / f"{name}.tar.gz"
    if "/" not in name and not name.endswith((".tar.gz", ".tgz", ".zip", ".tar")) and archive.exists():
        return archive
    raise SourceNotFoundError(f"{name}: no such folder or archive (nor {name}.tar.gz)")


@dataclass
class WorkerSession:
    """The worker's state: the settings and the active model."""

    settings: WorkerSettings
    model: Model | None = None
    config: TrainConfig | None = None
    runtime: Runtime = field(default_factory=Runtime)

    # -- start ----------------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Train or load the model for the starting data set; returns the ready answer."""
        from photolabel.backbones import get_backbone
        from photolabel.sources import load_dataset
        from photolabel.training import plan_model_id

        s = self.settings
        self.config = config = s.train_config()
        self.runtime = s.runtime()
        # The extracted archive is only needed while training: its images' embeddings are
        # cached and a later retrain rebuilds them from the model's lineage.
        with load_dataset(resolve_dataset(s.dataset), classes=config.classes) as dataset:
            backbone = get_backbone(config.backbone, threads=self.runtime.threads, cache_dir=self.runtime.cache_dir)
            planned, _ = plan_model_id(dataset.records, dataset.labels, config, backbone.hash)
            existing = self._models_dir / planned
            loaded = False
            if (existing / "model.json").is_file():
                try:
                    self.model = load_model(existing, runtime=self.runtime)
                    loaded = True
                except PhotolabelError:
                    self.model = None
            if self.model is None:
                self.model = self._train(dataset, base=None)
        return {"ok": True, "ready": True, "model_id": self.model.model_id, "labels": list(self.model.labels),
                "loaded": loaded}

    @property
    def _models_dir(self) -> Path:
        return self.settings.work_dir / "models"

    def _train(self, dataset: Dataset, base: Model | None) -> Model:
        """Train into a staging folder, then move it to models/<model_id>; the old model stays active until then."""
        from photolabel.training import train

        assert self.config is not None
        self._models_dir.mkdir(parents=True, exist_ok=True)
        staging = self._models_dir / f".incoming-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            result = train(dataset, staging, self.config, self.runtime, base_model=base, write_run_json=False)
            final = self._models_dir / result.model_id
            if final.exists():
                try:  # the same model, trained before (content-addressed): keep that copy
                    return load_model(final, runtime=self.runtime)
                except PhotolabelError:  # a damaged leftover: replace it with the fresh one
                    shutil.rmtree(final, ignore_errors=True)
            try:
                os.replace(staging, final)
            except OSError:
                if not (final / "model.json").is_file():  # not another worker winning the race
                    raise
            return load_model(final, runtime=self.runtime)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # -- commands -------------------------------------------------------------------------
    def handle(self, line: str) -> dict[str, Any] | None:
        """Answer one command line; ``None`` means quit. Never raises for bad input."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return _error(CommandError(f"cannot parse the command: {exc}"))
        if not words:
            return {"ok": True, "empty": True}
        command, args = words[0].lower(), words[1:]
        try:
            if command in ("quit", "exit"):
                return None
            if command == "help":
                return {"ok": True, "help": HELP_TEXT}
            if command == "info":
                return self.info()
            if command == "predict":
                if len(args) != 1:
                    raise CommandError("usage: predict IMAGE")
                return self.predict(args[0])
            if command == "train":
                if len(args) != 2:
                    raise CommandError("usage: train TRAIN.tar.gz VALID.tar.gz")
                return self.retrain(args[0], args[1])
            raise CommandError(f"unknown command {command!r}; {HELP_TEXT}")
        except PhotolabelError as exc:
            return _error(exc)
        except Exception as exc:  # the worker must outlive any single command
            return {"ok": False, "error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}}

    def predict(self, image: str) -> dict[str, Any]:
        assert self.model is not None
        from photolabel.dataset import BadInput
        from photolabel.inputs import read_images

        (result,) = self.model.predict_batch(read_images([image], self.runtime.fetch))
        if isinstance(result, BadInput):
            return {"ok": False, "error": {"code": result.code, "message": result.message}}
        return {"ok": True, "label": result.label, "best": result.best, "unknown": result.unknown,
                "scores": result.scores, "model_id": result.model_id, "image": result.image, "sha256": result.sha256}

    def retrain(self, train_archive: str, valid_archive: str) -> dict[str, Any]:
        from photolabel import storage
        from photolabel.sources import load_dataset

        assert self.model is not None
        loaded: list[Dataset] = []
        try:
            for name, split in ((train_archive, "train"), (valid_archive, "valid")):
                path: Path | str = name if not storage.is_local(name) else Path(name)
                if isinstance(path, Path) and not path.exists():
                    raise SourceNotFoundError(f"{name}: no such archive")
                dataset = load_dataset(path, classes=self.settings.classes or None, require_labels=False)
                loaded.append(dataset)
                dataset.records = [replace(r, split=split) for r in dataset.records]
            merged = Dataset(
                records=[r for d in loaded for r in d.records],
                labels=tuple(dict.fromkeys(label for d in loaded for label in d.labels)),
            )
            before = len(self.model.lineage.get("images", []))
            model = self._train(merged, base=self.model)
        finally:  # the extracted images are embedded (and cached) by now, or not needed
            for dataset in loaded:
                dataset.close()
        self.model = model
        validation = (model.metrics.get("validation") or {}).get("accuracy")
        return {"ok": True, "message": TRAINED_TEXT, "model_id": model.model_id, "labels": list(model.labels),
                "added": len(model.lineage["images"]) - before, "validation_accuracy": validation}

    def info(self) -> dict[str, Any]:
        assert self.model is not None
        validation = (self.model.metrics.get("validation") or {}).get("accuracy")
        return {"ok": True, "model_id": self.model.model_id, "labels": list(self.model.labels),
                "backbone": self.model.card.backbone.name, "head": self.model.card.head.name,
                "head_params": dict(self.model.card.head.params),
                "n_images": len(self.model.lineage.get("images", [])), "validation_accuracy": validation,
                "model_dir": str(self.model.path)}


def _error(exc: PhotolabelError) -> dict[str, Any]:
    return {"ok": False, "error": {"code": exc.code, "message": str(exc).splitlines()[0]}}


def format_answer(answer: dict[str, Any], as_json: bool) -> str:
    """One line: JSON, or the seed's plain text (the label alone for predict)."""
    if as_json:
        return json.dumps(answer)  # not sorted: scores keep the model's label order, as in `predict --json`
    if not answer.get("ok"):
        return f"error: {answer['error']['message']}"
    if answer.get("ready"):
        how = "loaded" if answer.get("loaded") else "trained"
        return f"{READY_TEXT}: model {answer['model_id']} ({how}; labels: {', '.join(answer['labels'])})"
    if "label" in answer:
        return str(answer["label"])
    if answer.get("message") == TRAINED_TEXT:
        return f"{TRAINED_TEXT} {answer['model_id']}"
    if "help" in answer:
        return str(answer["help"])
    if answer.get("empty"):
        return ""
    accuracy = answer.get("validation_accuracy")
    return (f"model {answer['model_id']} labels: {', '.join(answer['labels'])}; {answer['n_images']} images; "
            f"backbone {answer['backbone']}, head {answer['head']}"
            + (f"; validation accuracy {accuracy:.4f}" if accuracy is not None else ""))


def run_worker(settings: WorkerSettings, *, as_json: bool, stdin: TextIO = sys.stdin,
               stdout: TextIO = sys.stdout) -> int:
    """The read-answer loop. Returns the exit code (0 on quit/EOF, 1 if the start failed)."""
    import signal

    _tolerant_streams(stdin, stdout)
    previous = _exit_cleanly_on_sigterm()
    try:
        return _serve(settings, as_json=as_json, stdin=stdin, stdout=stdout)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _serve(settings: WorkerSettings, *, as_json: bool, stdin: TextIO, stdout: TextIO) -> int:
    session = WorkerSession(settings)
    try:
        ready = session.start()
    except PhotolabelError as exc:
        answer = _error(exc)
    except OSError as exc:  # e.g. an unwritable --work-dir
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        answer = {"ok": False, "error": {"code": "os_error", "message": f"{name}{exc.strerror or exc}"}}
    else:
        answer = None
    if answer is not None:
        print(format_answer(answer, as_json), file=stdout if as_json else sys.stderr, flush=True)
        return 1
    interactive = stdin.isatty()
    try:
        print(format_answer(ready, as_json), file=stdout, flush=True)
        while True:
            if interactive:
                print("photolabel> ", end="", file=stdout, flush=True)
            line = stdin.readline()
            if not line:
                break
            answer = session.handle(line.strip())
            if answer is None:
                if as_json:
                    print(json.dumps({"ok": True, "quit": True}), file=stdout, flush=True)
                break
            if answer.get("empty") and not as_json:
                continue
            print(format_answer(answer, as_json), file=stdout, flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the driving process went away: nobody is left to answer
        _silence(stdout)
        return 1
    return 0


def _tolerant_streams(stdin: TextIO, stdout: TextIO) -> None:
    """Bytes that are not valid in the locale's encoding must not end the worker.

    A file name in a command may be any bytes (kept as surrogates, so the path still
    opens); an answer that cannot be encoded is written with backslash escapes.
    """
    for stream, errors in ((stdin, "surrogateescape"), (stdout, "backslashreplace")):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            with contextlib.suppress(OSError, ValueError):  # a stream that cannot change keeps its setting
                reconfigure(errors=errors)


def _exit_cleanly_on_sigterm() -> Any:
    """SIGTERM unwinds like an exception (exit 143), so a retrain's staging folder and extracted
    archives are removed. Returns the handler it replaced (None off the main thread: left alone)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    return signal.signal(signal.SIGTERM, stop)


def _silence(stdout: TextIO) -> None:
    with contextlib.suppress(OSError, ValueError, AttributeError):  # not a real file: nothing to do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
