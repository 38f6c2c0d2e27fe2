"""The ``photolabel`` command line: a thin layer over the library.

Errors are mapped once, here: a :class:`PhotolabelError` prints one line
``error: ...`` on stderr and exits 1, never a traceback. Usage errors exit 2.
Environment variables (the static-transfer-learning service's names) are read by click when a command starts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from photolabel.config import RUNTIME_DEFAULTS, TRAIN_DEFAULTS
from photolabel.dataset import BadInput, parse_label_list
from photolabel.errors import PhotolabelError

EXIT_ERROR = 1


#: the options that take every following word up to the next option (``-c a b c``), per command
GREEDY_OPTIONS = ("-c", "--classes")


def _looks_like_data(word: str) -> bool:
    """True for a word that names DATA rather than a label: an existing path, a URI, an archive or a CSV."""
    if "://" in word or word.lower().endswith((".csv", ".zip", ".tar.gz", ".tgz", ".tar")):
        return True
    try:
        return Path(word).exists()
    except OSError:
        return False


class ClassesCommand(click.Command):
    """A command whose ``-c/--classes`` takes every following word up to the next option, as the Golem image
    classifier takes ``-c blouse halter sweater``; ``-c a,b,c`` and ``-c a -c b`` work too.

    Done with click's public means: the words are rewritten into repeated ``-c WORD`` before click parses
    them. When a required argument (DATA) would be missing, the last words after ``-c`` that name an
    existing path or a URI are given back to it (``train -c a b c DATA --out M``); when none does,
    the error says that ``-c`` took them.
    """

    def _takes_values(self, ctx: click.Context) -> dict[str, int]:
        counts: dict[str, int] = {}
        for param in self.get_params(ctx):
            if isinstance(param, click.Option):
                n = 0 if (param.is_flag or param.count) else param.nargs
                for opt in (*param.opts, *param.secondary_opts):
                    counts[opt] = n
        return counts

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes = self._takes_values(ctx)
        out: list[str] = []
        runs: list[list[int]] = []  # indexes in ``out`` of the words each greedy -c took
        positional = 0
        i = 0
        while i < len(args):
            word = args[i]
            if word == "--":
                out.extend(args[i:])
                positional += len(args) - i - 1
                break
            name, eq, attached = word.partition("=")
            greedy = None
            if name in GREEDY_OPTIONS:
                greedy = [attached] if eq else []
            elif word.startswith("-c") and not word.startswith("--") and len(word) > 2:
                greedy = [word[2:]]
            if greedy is not None:
                run: list[int] = []
                for value in greedy:
                    out.extend(("-c", value))
                    run.append(len(out) - 1)
                i += 1
                while i < len(args) and not (args[i].startswith("-") and len(args[i]) > 1):
                    out.extend(("-c", args[i]))
                    run.append(len(out) - 1)
                    i += 1
                runs.append(run)
                continue
            if word.startswith("-") and len(word) > 1:
                n = takes.get(name, 0) if not eq else 0
                out.extend(args[i:i + 1 + n])
                i += 1 + n
                continue
            out.append(word)
            positional += 1
            i += 1
        required = sum(1 for p in self.get_params(ctx) if isinstance(p, click.Argument) and p.required)
        missing = required - positional
        if missing > 0 and runs and "--help" not in args and "-h" not in args:
            given_back: list[int] = []
            for run in reversed(runs):
                while run and len(given_back) < missing and _looks_like_data(out[run[-1]]):
                    given_back.append(run.pop())
                if len(given_back) == missing:
                    break
            if len(given_back) < missing:
                taken = [out[index] for run in runs for index in run]
                argument = next(p for p in self.get_params(ctx) if isinstance(p, click.Argument))
                name = (argument.metavar or argument.name or "DATA").upper()
                raise click.UsageError(
                    f"-c took {', '.join(repr(w) for w in taken)} as classes and left no {name}: put {name} "
                    f"before -c, or separate the classes with commas (-c {','.join(taken) or 'a,b'})", ctx)
            drop = set(given_back)
            moved = [out[index] for index in sorted(given_back)]
            out = [w for k, w in enumerate(out) if k not in drop and k + 1 not in drop]
            out = [*moved, *out]  # positionals first: click reads them in order
        return super().parse_args(ctx, out)


#: when to pick each built-in backbone and head (speed, accuracy); ``--backbone``/``--head`` help lists every
#: registered name, with its registry summary where a name has no line here
CHOICE_GUIDE = {
    "backbone": {
        "classic": "fastest, no network; far less accurate on photos (Golem classifier's features)",
        "efficientnet-lite0": "fast (224 px); a bit less accurate than lite1: slow machines, many images",
        "efficientnet-lite1": "medium (240 px); good accuracy: start here",
        "efficientnet-lite2": "about 1.4x lite1's time (260 px); most accurate: when accuracy matters most",
    },
    "head": {
        "logistic": "fast; accurate, calibrated: start here",
        "svm": "slower with many images; often as accurate as logistic: try with --tune",
        "mlp": "slower (epochs); can beat logistic with many images per label",
        "lda": "fast; good with few images per label",
        "knn": "instant fit, slower answers; fair: few images per label",
        "rf": "slow; fair on embeddings: the classic backbone's features",
        "cart": "fast; least accurate: one tree you can read",
        "nb": "fastest; least accurate: a baseline",
    },
}


def _choices_help(kind: str, lead: str) -> str:
    """``lead``, then one line per registered backbone or head: what it costs, how accurate, when to pick it."""
    if kind == "backbone":
        from photolabel.backbones import describe_backbones

        summaries = describe_backbones()
    else:
        from photolabel.heads import get_head_class, list_heads

        summaries = {name: get_head_class(name).summary for name in list_heads()}
    default = TRAIN_DEFAULTS.backbone if kind == "backbone" else TRAIN_DEFAULTS.head
    width = max(len(name) for name in summaries) + 2
    lines = [f"{name:<{width}}{CHOICE_GUIDE[kind].get(name, summaries[name])}{' (default)' if name == default else ''}"
             for name in summaries]
    return lead + "\n\n\b\n" + "\n".join(lines)

EXIT_USAGE = 2

#: how the command line words a core error's remedy
REMEDIES = {
    "skip_bad": "use --skip-bad to skip unreadable images and use the rest",
    "out": "choose another --out",
    "classes": "see --classes",
    "head_only": "export the head alone with --head-only",
}

#: the option that sets each TrainConfig / Runtime field
FLAGS = {
    "seed": "--seed", "valid_fraction": "--valid-fraction", "backbone": "--backbone", "head": "--head",
    "classes": "--classes", "threads": "--threads", "batch_size": "--batch-size", "head_params": "--head-param",
    "augment": "--augment", "finetune": "--finetune",
    "calibrate": "--calibration", "unknown": "--unknown",
    "max_per_label": "--max-per-label", "balance": "--balance", "tune": "--tune", "preset": "--preset",
}


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def describe_error(exc: PhotolabelError) -> str:
    """The error's message, with the command line's own words for its remedy."""
    from photolabel.errors import ConfigError

    message = str(exc)
    if isinstance(exc, ConfigError) and exc.field:
        flag = FLAGS.get(exc.field, "--head-param" if exc.field not in FLAGS else exc.field)
        message = f"{flag}: {message}"
    remedy = REMEDIES.get(exc.remedy or "")
    return f"{message}; {remedy}" if remedy else message


def _unwind_on_sigterm() -> None:
    """On SIGTERM, unwind as Ctrl-C does, so that the staged model and the temporary folders are removed
    (OUT holds the old model or the new one, never half of one); exit 143."""
    import signal

    def stop(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        click.echo("stopped (SIGTERM); nothing half-written is left in OUT", err=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def run_safely(action: Callable[[], Any]) -> Any:
    """Run ``action``; a PhotolabelError becomes one ``error:`` line (exit 2 for a bad setting, else 1)."""
    from photolabel.errors import ConfigError

    try:
        return action()
    except ConfigError as exc:
        fail(describe_error(exc), EXIT_USAGE)
    except PhotolabelError as exc:
        fail(describe_error(exc))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as exc:  # disk full, permission denied on --out, ...
        name = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        fail(f"{name}{exc.strerror or exc}")


def _progress(quiet: bool) -> bool:
    from photolabel.progress import progress_enabled

    return progress_enabled(quiet)


def _runtime(threads: int | None, cache_dir: Path | None, batch_size: int, http_timeout: float,
             download_pool_size: int, quiet: bool) -> Any:
    """The Runtime of a command, from its common options."""
    from photolabel.config import Runtime
    from photolabel.fetch import FetchOptions

    limits = _data_limits()
    return run_safely(lambda: Runtime(threads=threads, cache_dir=cache_dir, batch_size=batch_size,
                                      fetch=FetchOptions(timeout=http_timeout, pool_size=download_pool_size),
                                      progress=_progress(quiet), **limits))


_DATA_LIMITS_KEY = "photolabel.data_limits"
_DATA_LIMIT_FLAGS = ("max_archive_bytes", "max_archive_members", "max_archive_ratio", "archive_deadline",
                     "max_csv_rows", "max_csv_field_bytes")


def data_limit_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """The archive and CSV limit flags (for commands that read DATA); ``_runtime`` puts them in the Runtime."""
    import functools

    from photolabel.limits import CSV_MODULE_FIELD_LIMIT, DEFAULT_ARCHIVE_LIMITS, DEFAULT_CSV_LIMITS

    @functools.wraps(function)
    def command(**kwargs: Any) -> Any:
        click.get_current_context().meta[_DATA_LIMITS_KEY] = {name: kwargs.pop(name) for name in _DATA_LIMIT_FLAGS}
        return function(**kwargs)

    options = [
        click.option("--max-archive-bytes", type=click.IntRange(1, None),
                     default=DEFAULT_ARCHIVE_LIMITS.max_total_bytes, envvar="MAX_ARCHIVE_BYTES", show_envvar=True,
                     show_default=True, metavar="BYTES",
                     help="Most bytes an archive may hold once extracted; a larger one is refused before any of it "
                          "is written."),
        click.option("--max-archive-members", type=click.IntRange(1, None), default=DEFAULT_ARCHIVE_LIMITS.max_members,
                     envvar="MAX_ARCHIVE_MEMBERS", show_envvar=True, show_default=True, metavar="N",
                     help="Most entries (files and folders) in an archive."),
        click.option("--max-archive-ratio", type=click.FloatRange(1, None), default=DEFAULT_ARCHIVE_LIMITS.max_ratio,
                     envvar="MAX_ARCHIVE_RATIO", show_envvar=True, show_default=True, metavar="RATIO",
                     help="Most bytes an archive may expand to per byte of the archive file, once it expands to "
                          f"more than {DEFAULT_ARCHIVE_LIMITS.ratio_floor_bytes // 1024**2} MiB (compression bombs)."),
        click.option("--archive-deadline", type=click.FloatRange(0, None, min_open=True),
                     default=DEFAULT_ARCHIVE_LIMITS.deadline_s, envvar="ARCHIVE_DEADLINE_S", show_envvar=True,
                     show_default=True, metavar="SECONDS", help="Seconds the extraction of an archive may take."),
        click.option("--max-csv-rows", type=click.IntRange(1, None), default=DEFAULT_CSV_LIMITS.max_rows,
                     envvar="MAX_CSV_ROWS", show_envvar=True, show_default=True, metavar="N",
                     help="Most rows in a CSV manifest."),
        click.option("--max-csv-field-bytes", type=click.IntRange(1, CSV_MODULE_FIELD_LIMIT),
                     default=DEFAULT_CSV_LIMITS.max_field_bytes, envvar="MAX_CSV_FIELD_BYTES", show_envvar=True,
                     show_default=True, metavar="BYTES", help="Most bytes in one cell of a CSV manifest."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _data_limits() -> dict[str, Any]:
    """``archive_limits`` and ``csv_limits`` for the Runtime, from the flags of ``data_limit_options`` (if any)."""
    context = click.get_current_context(silent=True)
    flags = context.meta.get(_DATA_LIMITS_KEY) if context is not None else None
    if not flags:
        return {}
    from photolabel.errors import ConfigError
    from photolabel.limits import ArchiveLimits, CsvLimits

    try:
        archive = ArchiveLimits(max_total_bytes=flags["max_archive_bytes"], max_members=flags["max_archive_members"],
                                max_ratio=flags["max_archive_ratio"], deadline_s=flags["archive_deadline"])
        csv_limits = CsvLimits(max_rows=flags["max_csv_rows"], max_field_bytes=flags["max_csv_field_bytes"])
    except ConfigError as exc:
        flag = {"max_total_bytes": "--max-archive-bytes", "max_members": "--max-archive-members",
                "max_ratio": "--max-archive-ratio", "deadline_s": "--archive-deadline", "max_rows": "--max-csv-rows",
                "max_field_bytes": "--max-csv-field-bytes"}.get(exc.field or "", "a limit")
        fail(f"{flag}: {exc}", EXIT_USAGE)
    return {"archive_limits": archive, "csv_limits": csv_limits}


def _head_params(values: Sequence[str]) -> dict[str, str]:
    """``--head-param NAME=VALUE`` (repeatable) as a mapping; values are typed and checked by the head."""
    params: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            fail(f"--head-param {item!r}: expected NAME=VALUE, for example C=0.1", EXIT_USAGE)
        params[name.strip()] = value
    return params


def _epochs_from_env(head: str, params: dict[str, str]) -> dict[str, str]:
    """``params`` with ``epochs`` from the EPOCHS variable (the static-transfer-learning service's) when the head
    trains in epochs and ``--head-param epochs=`` is not given. (BATCH_SIZE is --batch-size, the backbone's batch;
    a head's batch is ``--head-param batch_size=``.)"""
    import os

    from photolabel.errors import ConfigError
    from photolabel.heads import get_head_class, list_heads

    value = os.environ.get("EPOCHS", "").strip()
    if not value or "epochs" in params or head not in list_heads():
        return params
    cls = get_head_class(head)
    if "epochs" not in cls.param_names():
        return params
    try:
        cls.constraints["epochs"].check("epochs", value)
    except ConfigError:
        fail(f"EPOCHS={value!r}: expected {cls.constraints['epochs'].describe()} (passes over the training images "
             f"of head {head})", EXIT_USAGE)
    return {**params, "epochs": value}


def _train_config(**fields: Any) -> Any:
    """The TrainConfig these options describe (fields left None keep their defaults); exit 2 if invalid."""
    from photolabel.config import TRAIN_DEFAULTS, merge_overrides

    head_params = fields.pop("head_params", None)
    config = run_safely(lambda: merge_overrides(TRAIN_DEFAULTS, **fields))
    if head_params:
        config = run_safely(lambda: config.replace(head_params=head_params))
    return config


def common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option("--threads", type=click.IntRange(1, 256), default=None,
                     help="CPU threads for decoding and the backbone (default: all cores)."),
        click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
                     envvar="PHOTOLABEL_CACHE_DIR", default=None, show_envvar=True,
                     help="Embedding and backbone cache (default ~/.cache/photolabel)."),
        click.option("--batch-size", type=click.IntRange(1, 4096), default=RUNTIME_DEFAULTS.batch_size,
                     envvar="BATCH_SIZE",
                     show_envvar=True, show_default=True, help="Images per backbone batch."),
        click.option("--http-timeout", type=float, default=120.0, envvar="HTTP_TIMEOUT", show_envvar=True,
                     show_default=True, help="Seconds before a URL download gives up."),
        click.option("--download-pool-size", type=click.IntRange(1, 256), default=16,
                     envvar="DOWNLOAD_POOL_SIZE", show_envvar=True, show_default=True,
                     help="Concurrent URL downloads."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def answer_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--calibration`` and ``--unknown``, for the commands that train."""

    def on_off(value: bool) -> str:
        return "on" if value else "off"

    options = [
        click.option("--calibration", type=click.Choice(("on", "off")), default=on_off(TRAIN_DEFAULTS.calibrate),
                     show_default=True,
                     help="Fit a temperature on the validation images so that the probabilities say how often "
                          "the model is right (the top label never changes)."),
        click.option("--unknown", type=click.Choice(("on", "off")), default=on_off(TRAIN_DEFAULTS.unknown),
                     show_default=True,
                     help='Answer "unknown" for an image unlike every training image, or when the model is not '
                          "confident enough; both thresholds are chosen on held-out images and kept in the model."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def balance_and_search_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """``--max-per-label``, ``--balance``, ``--tune`` and ``--preset``, for the commands that train."""
    options = [
        click.option("--max-per-label", "max_per_label", default=None, metavar="N|min",
                     help="Train on at most N images per label, chosen by hash and seed (the same every run); "
                          "'min' (or 0): as many as the smallest label has, like the static-transfer-learning "
                          "service's DATA_LIMIT=0. Validation images are never dropped. [default: all]"),
        click.option("--balance", is_flag=True, default=TRAIN_DEFAULTS.balance,
                     help="Weight each label inversely to its number of training images."),
        click.option("--tune", is_flag=True, default=TRAIN_DEFAULTS.tune,
                     help="Choose the head's parameters by 5-fold cross-validation on the training images "
                          "(lowest mean log-loss over the grid `photolabel heads` shows); slower, same result "
                          "every run."),
        click.option("--preset", type=click.Choice(["best"]), default=TRAIN_DEFAULTS.preset,
                     help="best: choose the head too, searching every head's grid the way --tune does, with and "
                          "without augmented views, and the head's grid on a fine-tuned backbone. Much slower."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def parse_max_per_label(value: str | None) -> int | None:
    """``--max-per-label``'s value: None (all), ``min`` (0: the smallest label's count) or a whole number."""
    if value is None:
        return None
    text = value.strip().lower()
    if text == "min":
        return 0
    if not text.isdigit():
        fail(f"--max-per-label: expected a whole number or 'min', got {value!r}", EXIT_USAGE)
    return int(text)


def describe_answers(card: Any, metrics: dict[str, Any]) -> list[str]:
    """Lines on a model's calibration and its unknown answer (none for a model without them)."""
    lines = []
    if card.calibration is not None:
        fitted = metrics.get("calibration") or {}
        if fitted.get("log_loss_before") is None:
            lines.append("calibration  none fitted (no validation images): probabilities as the head gives them")
        else:
            lines.append(f"calibration  temperature {card.calibration['temperature']:g}: validation log-loss "
                         f"{fitted['log_loss_before']:.4f} -> {fitted['log_loss_after']:.4f}, calibration error "
                         f"(ECE) {fitted['ece_before']:.4f} -> {fitted['ece_after']:.4f}")
    if card.unknown is not None:
        confidence = card.unknown["confidence_threshold"]
        unsure = f", or less than {100 * confidence:.1f}% sure" if confidence > 0 else ""
        lines.append(f"unknown      answered for an image farther than {card.unknown['distance_threshold']:g} "
                     f"(cosine distance) from the centre of every label's training images{unsure}")
    return lines


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="photolabel")
def main() -> None:
    """Turn labelled images into a reproducible image classifier, on a CPU."""


@main.command(cls=ClassesCommand)
@click.argument("data")
@click.option("-o", "--out", "out", default=None,
              help="Model directory to write (replaced if it holds a model): a path or a storage URI "
                   "such as s3://bucket/models/mine. [default: models/<model id>]")
@click.option("-c", "--classes", multiple=True, metavar="LABEL...",
              help="Labels in this order; images with any other label are refused. Give them as -c a,b,c, "
                   "-c a -c b, or -c a b c (the words up to the next option; DATA may follow them when it is "
                   "an existing path or a URI).")
@click.option("--seed", type=int, default=TRAIN_DEFAULTS.seed, envvar="RANDOM_SEED", show_envvar=True,
              show_default=True, help="Seeds the validation split and the head (0 to 4294967295).")
@click.option("--valid-fraction", type=float, default=None,
              help="Share of each label held out for validation when DATA has no valid/ folder, in [0, 1) "
                   f"[default: 1 - TRAIN_PERCENTAGE, i.e. {TRAIN_DEFAULTS.valid_fraction:g}].")
@click.option("--backbone", default=TRAIN_DEFAULTS.backbone,
              help=_choices_help("backbone", "Feature extractor (`photolabel backbones` lists them):"))
@click.option("--head", default=TRAIN_DEFAULTS.head,
              help=_choices_help("head", "Classifier fitted on the features (`photolabel heads` lists their "
                                         "parameters):"))
@click.option("--head-param", "head_param", multiple=True, metavar="NAME=VALUE",
              help="A hyperparameter of the head, e.g. C=0.1 (repeatable); `photolabel heads` lists them "
                   "with their defaults and ranges.")
@click.option("--augment", "augment", type=int, default=TRAIN_DEFAULTS.augment, show_default=True, metavar="K",
              help="Also train on K augmented views of each training image (flip, crop, small rotation, colour "
                   "jitter; 0 to 16), the same views every run; their embeddings are cached.")
@click.option("--finetune", is_flag=True, default=TRAIN_DEFAULTS.finetune,
              help="Also train the backbone's last block and 1x1 conv head on the training images (minutes on "
                   "a CPU; EfficientNet-Lite backbones only); the activations before them are cached.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images (listed as warnings) and train on the rest.")
@click.option("--from", "base_model", default=None,
              help="Add DATA to this model's images (incremental): its labels keep their order, new ones "
                   "append, and its backbone, head, head parameters, seed and valid fraction are used.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
@click.option("--tensorboard", "tensorboard", type=click.Path(file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Write TensorBoard curves into DIR (heads trained in epochs, such as mlp: loss "
                                  "and accuracy per epoch); view them with `tensorboard --logdir DIR`. Needs "
                                  "pip install 'photolabel[tensorboard]'. The model is the same with or without.")
@answer_options
@balance_and_search_options
@data_limit_options
@common_options
def train(data: str, out: str, classes: Sequence[Any], seed: int, valid_fraction: float | None,
          backbone: str, head: str, head_param: Sequence[str], augment: int, finetune: bool, skip_bad: bool,
          base_model: str | None, as_json: bool, threads: int | None, cache_dir: Path | None, batch_size: int,
          http_timeout: float, download_pool_size: int, quiet: bool, tensorboard: Path | None,
          calibration: str, unknown: str, max_per_label: str | None, balance: bool, tune: bool,
          preset: str | None) -> None:
    """Train a model on DATA: a folder (DATA/<label>/*, or train/ + valid/), a .tar.gz/.tgz/.zip
    archive of one, or a CSV manifest of `image,label[,sha1]` rows (paths or URIs). DATA may be
    a path or a storage URI (s3://bucket/prefix/, https://host/data.csv, ...)."""
    import os

    from photolabel.training import train as train_model

    if valid_fraction is None:
        percentage = os.environ.get("TRAIN_PERCENTAGE")
        try:
            share = float(percentage) if percentage else 1.0 - TRAIN_DEFAULTS.valid_fraction
        except ValueError:
            fail(f"TRAIN_PERCENTAGE={percentage!r} is not a number", EXIT_USAGE)
        if not 0.0 < share <= 1.0:
            # checked here so the message names the variable, not the derived validation share
            fail(f"TRAIN_PERCENTAGE={percentage!r} must be in (0, 1]: the share of each label used for training",
                 EXIT_USAGE)
        valid_fraction = round(1.0 - share, 6)
    config = _train_config(backbone=backbone, head=head, seed=seed, valid_fraction=valid_fraction,
                           classes=run_safely(lambda: parse_label_list(classes)),
                           head_params=_epochs_from_env(head, _head_params(head_param)), augment=augment,
                           finetune=finetune, calibrate=calibration == "on", unknown=unknown == "on",
                           max_per_label=parse_max_per_label(max_per_label), balance=balance, tune=tune,
                           preset=preset)
    runtime = _runtime(threads, cache_dir, batch_size, http_timeout, download_pool_size, quiet)
    if tensorboard is not None:
        from photolabel.tensorboard import require_tensorboard

        run_safely(require_tensorboard)
        runtime = runtime.replace(tensorboard_dir=tensorboard)
    _unwind_on_sigterm()
    from contextlib import nullcontext

    from photolabel.progress import StageDisplay, StageLines

    # every stage shows: in one display on a terminal, as lines on stderr elsewhere (pipe, CI, nohup); the
    # display covers downloads and embedding too, so the core draws no bars of its own
    display: Any = StageDisplay() if runtime.progress else nullcontext(None if quiet else StageLines())
    runtime = runtime.replace(progress=False)
    with display as on_stage:
        if out is None:
            result = run_safely(lambda: _train_into_models(data, config, runtime, base_model, skip_bad, on_stage))
        else:
            result = run_safely(lambda: train_model(data, out, config, runtime, base_model=base_model,
                                                    skip_bad=skip_bad, on_stage=on_stage))
    for problem in result.skipped:
        click.echo(f"warning: skipped {problem.message}", err=True)
    if as_json:
        click.echo(json.dumps(result.summary(), sort_keys=True))
        return
    from photolabel.evaluation import format_metrics

    card = result.model.card
    counts = result.model.lineage["counts"]["per_label"]
    click.echo(f"model     {result.model_id}")
    click.echo(f"saved to  {result.path}")
    click.echo(f"labels    {', '.join(f'{label} ({counts[label]})' for label in result.model.labels)}")
    click.echo(f"backbone  {card.backbone.name}   head  {card.head.name} ({_format_params(card.head.params)})")
    click.echo(f"images    {result.n_train} train, {result.n_valid} validation; embeddings computed "
               f"{result.embeddings_computed}, from cache {result.embeddings_cached}")
    if result.duplicates:
        from photolabel.dataset import describe_duplicates

        repeats = describe_duplicates(result.duplicates)
        shown = "; ".join(" = ".join(example["sources"]) for example in repeats["examples"])
        more = ", ..." if len({d.sha256 for d in result.duplicates}) > len(repeats["examples"]) else ""
        click.echo(f"duplicates {repeats['count']} image(s) listed again with the same bytes, trained on once: "
                   f"{shown}{more} (all in run.json)")
    unused = result.model.lineage["counts"].get("unused")
    if unused:
        click.echo(f"unused    {unused} training image(s) past --max-per-label (listed in lineage.json)")
    search = result.metrics.get("tuning")
    if search:
        chosen = search["candidates"][search["chosen"]["index"]]
        click.echo(f"tuning    chosen from {len(search['candidates'])} candidates by {search['folds']}-fold "
                   f"cross-validation: mean log-loss {chosen['mean_log_loss']:.4f}, accuracy "
                   f"{chosen['mean_accuracy']:.4f} (every candidate in metrics.json)")
    if result.skipped:
        click.echo(f"skipped   {len(result.skipped)} bad image(s), listed above")
    validation = result.metrics.get("validation")
    if validation:
        click.echo("validation:")
        click.echo(_indent(format_metrics(validation, width=_columns() - 2)))
    else:
        click.echo("validation: none (no validation images)")
    for line in describe_answers(card, result.metrics):
        click.echo(line)


def _train_into_models(data: str, config: Any, runtime: Any, base_model: str | None, skip_bad: bool,
                       on_stage: Any) -> Any:
    """Train without --out: into models/<model id> (replacing the same model trained before), via a folder
    beside it, since the id is known only once the images are embedded."""
    import os
    import shutil

    from photolabel.fsutil import exchange_paths, process_tag
    from photolabel.training import train as train_model

    models = Path("models")
    models.mkdir(exist_ok=True)
    staging = models / f".new-{process_tag()}"
    try:
        result = train_model(data, staging, config, runtime, base_model=base_model, skip_bad=skip_bad,
                             on_stage=on_stage)
        target = models / result.model_id
        if target.exists():
            if exchange_paths(staging, target):
                shutil.rmtree(staging)
            else:
                shutil.rmtree(target)
                os.rename(staging, target)
        else:
            os.rename(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result.path = target
    result.model.path = target
    return result


def _format_params(params: Any) -> str:
    return ", ".join(f"{name}={value}" for name, value in params.items())


def _columns() -> int:
    """The terminal's width (COLUMNS where set; 100 off a terminal)."""
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


@main.command()
@click.argument("model_dir")
@click.argument("images", nargs=-1, required=True)
@click.option("-k", "--top-k", type=click.IntRange(1, None), default=None,
              help="Show the K most probable labels.")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line: {"image", "sha256", "label", "best", "unknown", "scores", '
                   '"model_id"}; "label" is "unknown" when the model answers unknown, "best" its most probable '
                   'label.')
@common_options
def predict(model_dir: str, images: Sequence[str], top_k: int | None, as_json: bool, threads: int | None,
            cache_dir: Path | None, batch_size: int, http_timeout: float, download_pool_size: int,
            quiet: bool) -> None:
    """Label IMAGES (files, folders, globs, or URIs: file://, http(s)://, s3://, ...) with the model
    in MODEL_DIR (a path or a storage URI).

    The label is "unknown" when the image is unlike the model's training images or the model is
    not confident enough (models trained with --unknown on); the best guess follows in brackets."""
    from photolabel.inputs import read_images
    from photolabel.model import load_model

    runtime = _runtime(threads, cache_dir, batch_size, http_timeout, download_pool_size, quiet)
    model = run_safely(lambda: load_model(model_dir, runtime=runtime))
    inputs = list(_expand_each(images))  # a name, or a BadInput for an argument that expands to nothing
    inputs = run_safely(lambda: read_images(inputs, runtime.fetch))
    live = [x for x in inputs if not isinstance(x, BadInput)]
    results_live = iter(run_safely(lambda: model.predict_batch(live)))
    failed = 0
    for item in inputs:
        result = item if isinstance(item, BadInput) else next(results_live)
        if isinstance(result, BadInput):
            failed += 1
            reason = result.message
            if as_json:
                click.echo(json.dumps({"image": result.source, "error": {"code": result.code, "message": reason}}))
            click.echo(f"error: {reason}", err=True)
            continue
        if as_json:
            click.echo(json.dumps(result.to_dict(top_k), sort_keys=False))
        elif top_k:
            ranked = "  ".join(f"{label} {p:.4f}" for label, p in result.top(top_k))
            prefix = "unknown\t" if result.unknown else ""
            click.echo(f"{result.image}\t{prefix}{ranked}")
        elif result.unknown:  # the scores are still shown: the best guess, in brackets
            click.echo(f"{result.image}\t{result.label}\t({result.best} {result.probability:.4f})")
        else:
            click.echo(f"{result.image}\t{result.label}\t{result.probability:.4f}")
    if failed:
        sys.exit(EXIT_ERROR)


def _expand_each(images: Sequence[str]) -> list[Any]:
    """Each IMAGE argument expanded; one that names nothing becomes a BadInput, so the rest still run."""
    from photolabel.sources import expand_image_args

    items: list[Any] = []
    for arg in images:
        try:
            items.extend(expand_image_args([arg]))
        except PhotolabelError as exc:
            items.append(BadInput(arg, str(exc), exc.code))
    return items


@main.command()
@click.argument("model_dir")
@click.argument("data")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as one JSON object.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write confusion_matrix.png and report.html into this folder.")
@click.option("--skip-bad", is_flag=True, help="Skip unreadable images instead of stopping.")
@data_limit_options
@common_options
def evaluate(model_dir: str, data: str, as_json: bool, report_dir: Path | None, skip_bad: bool,
             threads: int | None, cache_dir: Path | None, batch_size: int, http_timeout: float,
             download_pool_size: int, quiet: bool) -> None:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix of MODEL_DIR on DATA."""
    from photolabel.evaluate import evaluate as evaluate_model
    from photolabel.evaluation import format_metrics, write_report

    runtime = _runtime(threads, cache_dir, batch_size, http_timeout, download_pool_size, quiet)
    metrics = run_safely(lambda: evaluate_model(model_dir, data, runtime, skip_bad=skip_bad))
    for problem in metrics["skipped"]:
        click.echo(f"warning: skipped {BadInput(problem['image'], problem['reason']).message}", err=True)
    if report_dir is not None:
        written = run_safely(lambda: write_report(metrics, report_dir, title=f"{model_dir} on {data}"))
        if not as_json:
            click.echo(f"report: {', '.join(str(p) for p in written)}")
    if as_json:
        click.echo(json.dumps(metrics, sort_keys=True))
    else:
        click.echo(format_metrics(metrics))


@main.command()
@click.argument("model_dir")
@click.option("--json", "as_json", is_flag=True, help="Print model.json, metrics and lineage summary as JSON.")
def info(model_dir: str, as_json: bool) -> None:
    """Labels, backbone, head, metrics and lineage of MODEL_DIR."""
    from photolabel.artifact import read_model_dir

    files = run_safely(lambda: read_model_dir(model_dir))
    card, lineage, metrics = files.card, files.lineage, files.metrics
    if as_json:
        summary = card.to_dict()
        summary["metrics"] = metrics
        summary["lineage"] = {k: v for k, v in lineage.items() if k != "images"}
        summary["lineage"]["n_images"] = len(lineage.get("images", []))
        click.echo(json.dumps(summary, sort_keys=True))
        return
    backbone = card.backbone
    click.echo(f"model      {card.model_id}")
    click.echo(f"labels     {', '.join(card.labels)}")
    click.echo(f"backbone   {backbone.name} (hash {backbone.hash[:16]}…, "
               f"{backbone.embedding_dim}-d, input {'x'.join(map(str, backbone.image_size))})")
    if card.finetune:
        tuned = card.finetune
        click.echo(f"finetuned  {tuned.get('cut')}; kept epoch {tuned.get('best_epoch')} of "
                   f"{tuned.get('epochs_run')} run (tail sha256 {str(tuned.get('tail_sha256'))[:16]}…)")
    click.echo(f"head       {card.head.name} v{card.head.version} ({_format_params(card.head.params)})")
    click.echo(f"config     seed={card.config.seed} valid_fraction={card.config.valid_fraction}")
    counts = lineage.get("counts", {})
    click.echo(f"lineage    manifest {lineage['manifest_sha256']}")
    click.echo(f"           {len(lineage.get('images', []))} images: {counts.get('train')} train, "
               f"{counts.get('valid')} validation; per label "
               + ", ".join(f"{k} {v}" for k, v in counts.get("per_label", {}).items()))
    validation = metrics.get("validation")
    if validation:
        from photolabel.evaluation import format_metrics

        click.echo("validation")
        click.echo(_indent(format_metrics(validation, width=_columns() - 2)))
    for line in describe_answers(card, metrics):
        click.echo(line)
    if files.run:
        click.echo(f"trained    {files.run.get('created_at')} in {files.run.get('duration_s')} s "
                   f"on {files.run.get('host')}")


@main.command(name="export")
@click.argument("model_dir")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--head-only", is_flag=True, help="Export only the head (embedding -> probabilities).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PHOTOLABEL_CACHE_DIR",
              default=None, show_envvar=True,
              help="Backbone cache, where the backbone's ONNX file is found (default ~/.cache/photolabel).")
def export_command(model_dir: str, out: Path, head_only: bool, cache_dir: Path | None) -> None:
    """Write MODEL_DIR as one ONNX graph: uint8 RGB image (N x H x W x 3) -> probabilities (calibrated),
    and, for a model that answers unknown, a second output 'unknown' (bool per image)."""
    from photolabel.export import export_onnx
    from photolabel.model import load_model

    model = run_safely(lambda: load_model(model_dir, cache_dir=cache_dir))
    path = run_safely(lambda: export_onnx(model, out, head_only=head_only))
    size = model.card.backbone.image_size
    unknown = ", output 'unknown' [N] (bool: the model answers unknown)" if model.post.unknown is not None else ""
    click.echo(f"wrote {path}: input 'image' uint8 [N, {size[0]}, {size[1]}, 3] (RGB, bilinear resize), "
               f"output 'probabilities' [N, {len(model.labels)}] for labels {', '.join(model.labels)}{unknown}"
               if not head_only else f"wrote {path}: input 'embedding', output 'probabilities'{unknown}")


@main.command()
@click.option("--backbone", "names", multiple=True, default=(TRAIN_DEFAULTS.backbone,), show_default=True,
              help="Backbone(s) to prepare; repeat for several.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PHOTOLABEL_CACHE_DIR",
              default=None, show_envvar=True,
              help="Where the backbones are written (default ~/.cache/photolabel).")
def prepare(names: Sequence[str], cache_dir: Path | None) -> None:
    """Export backbones to ONNX into the cache now (e.g. while building a container image)."""
    from photolabel.backbones import get_backbone

    for name in names:
        backbone = run_safely(lambda name=name: get_backbone(name, cache_dir=cache_dir))
        onnx_path = getattr(backbone, "onnx_path", None)
        where = run_safely(onnx_path) if onnx_path is not None else "(numpy features, nothing to export)"
        click.echo(f"{name:<20} hash {backbone.hash[:16]}…  {where}")


@main.command()
def backbones() -> None:
    """List the registered backbones."""
    from photolabel.backbones import describe_backbones

    for name, summary in describe_backbones().items():
        click.echo(f"{name:<20} {summary}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object: each head's parameters, defaults, ranges.")
def heads(as_json: bool) -> None:
    """List the registered heads with their parameters (set them with --head-param NAME=VALUE) and the
    values --tune and --preset best try."""
    from photolabel.heads import get_head_class, list_heads

    listing = {}
    for name in list_heads():
        cls = get_head_class(name)
        listing[name] = {
            "summary": cls.summary, "version": cls.version,
            "params": {param: {"default": default, "accepts": cls.constraints[param].describe(),
                               "help": cls.constraints[param].help}
                       for param, default in cls.default_params().items()},
            "tune_grid": {param: list(values) for param, values in cls.tune_grid.items()},
        }
    if as_json:
        click.echo(json.dumps(listing))
        return
    for name, entry in listing.items():
        click.echo(f"{name:<10} {entry['summary']} (version {entry['version']})")
        for param, spec in entry["params"].items():
            default = "none" if spec["default"] is None else spec["default"]
            click.echo(f"    {param}={default:<10} {spec['accepts']}: {spec['help']}")
        if entry["tune_grid"]:
            tried = "; ".join(f"{param} in {', '.join('none' if v is None else str(v) for v in values)}"
                              for param, values in entry["tune_grid"].items())
            click.echo(f"    --tune tries {tried}")


@main.command(cls=ClassesCommand)
@click.option("-d", "--dataset", required=True,
              help="Folder or archive to start from, or a bare NAME for NAME.tar.gz here "
                   "(as the Golem image classifier service takes it).")
@click.option("-c", "--classes", multiple=True, metavar="LABEL...",
              help="Labels, in order (the Golem image classifier service's -c a b c); -c a,b,c and "
                   "-c a -c b work too.")
@click.option("--json", "as_json", is_flag=True, help="Answer with one JSON object per line.")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("photolabel-worker"),
              show_default=True, help="Where the worker keeps its models (content-addressed).")
@click.option("--seed", type=int, default=TRAIN_DEFAULTS.seed, envvar="RANDOM_SEED", show_envvar=True,
              show_default=True, help="Seeds the validation split and the head (0 to 4294967295).")
@click.option("--backbone", default=TRAIN_DEFAULTS.backbone,
              help=_choices_help("backbone", "Feature extractor (`photolabel backbones` lists them):"))
@click.option("--head", default=TRAIN_DEFAULTS.head,
              help=_choices_help("head", "Classifier fitted on the features (`photolabel heads` lists their "
                                         "parameters):"))
@click.option("--head-param", "head_param", multiple=True, metavar="NAME=VALUE",
              help="A hyperparameter of the head (repeatable); see `photolabel heads`.")
@click.option("--augment", "augment", type=int, default=TRAIN_DEFAULTS.augment, show_default=True, metavar="K",
              help="Also train on K augmented views of each training image (0 to 16).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="CPU threads for decoding and the backbone (default: all cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PHOTOLABEL_CACHE_DIR",
              default=None, show_envvar=True, help="Embedding and backbone cache (default ~/.cache/photolabel).")
@answer_options
@balance_and_search_options
def worker(dataset: str, classes: Sequence[Any], as_json: bool, work_dir: Path, seed: int, backbone: str,
           head: str, head_param: Sequence[str], augment: int, threads: int | None, cache_dir: Path | None,
           calibration: str, unknown: str, max_per_label: str | None, balance: bool, tune: bool,
           preset: str | None) -> None:
    """A long-lived classifier on stdin/stdout, as the Golem image classifier service runs:
    predict IMAGE | train TRAIN VALID | info | help | quit.

    Settings are checked when the worker starts: a bad one is its first answer (ok: false with --json)."""
    from photolabel.adapters.worker import WorkerSettings, run_worker

    names = run_safely(lambda: parse_label_list(classes)) or ()
    settings = WorkerSettings(dataset=dataset, classes=names, work_dir=work_dir, seed=seed, backbone=backbone,
                              head=head, head_params=_head_params(head_param), augment=augment,
                              calibrate=calibration == "on", unknown=unknown == "on",
                              max_per_label=parse_max_per_label(max_per_label), balance=balance, tune=tune,
                              preset=preset, threads=threads, cache_dir=cache_dir)
    sys.exit(run_worker(settings, as_json=as_json))


@main.command()
@click.option("--host", default=None, help="Address to bind [default: API_HOST, else 127.0.0.1].")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port [default: API_PORT, else 8080].")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Job database, uploads and models [default: DATA_DIR, else ./data].")
@click.option("--no-auth", is_flag=True, default=False,
              help="Listen on a non-loopback --host without API_TOKEN: anyone who reaches the port may then train, "
                   "delete models and upload [default: NO_AUTH, else refuse].")
@click.option("--models", "models_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              metavar="DIR", help="Register the models trained with the CLI at start: DIR is a model directory "
                                  "(train --out) or a folder of them. Each is checked by its hashes and copied to "
                                  "DATA_DIR/models/<model_id>; one that fails is logged and skipped.")
def serve(host: str | None, port: int | None, data_dir: Path | None, no_auth: bool,
          models_dir: Path | None = None) -> None:
    """Run the HTTP service: the static-transfer-learning service's /train and /infer, the /v1 API, the web page at /,
    Swagger at /api/doc. Configured by environment variables (DATA_DIR, API_PORT, ...);
    these flags override them. With API_TOKEN (or API_TOKEN_FILE) set, training, deleting and every other
    change need 'Authorization: Bearer <token>'; without one it listens only on a loopback address unless
    --no-auth. SIGTERM stops it gracefully: /readyz answers 503 at once, a running
    training job is queued again, and requests in progress get DRAIN_TIMEOUT_S (30) seconds to finish."""
    from pydantic import ValidationError

    from photolabel.adapters.http.settings import ServiceSettings

    overrides = {name: value for name, value in (("api_host", host), ("api_port", port), ("data_dir", data_dir))
                 if value is not None}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(_setting_problem(error) for error in exc.errors())
        fail(f"bad setting: {problems}")
    from photolabel.adapters.http.auth import is_loopback_host

    open_to_all = no_auth or settings.no_auth
    if settings.bearer_token() is None and not is_loopback_host(settings.api_host):
        if not open_to_all:
            fail(f"refusing to listen on {settings.api_host} without a token: anyone who reaches it could train, "
                 "delete models and fill the disk. Set API_TOKEN (or API_TOKEN_FILE), listen on 127.0.0.1 "
                 "(--host), or pass --no-auth (NO_AUTH=true) to serve it open anyway")
        click.echo(f"warning: listening on {settings.api_host} with no token (--no-auth): anyone who reaches the "
                   "port may train, delete models and upload", err=True)
    import logging

    from photolabel.adapters.http.app import create_app
    from photolabel.adapters.http.lifecycle import serve_app

    # uvicorn configures only its own loggers; the service's (jobs, errors) go to stderr too.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    # SIGTERM drains first (readyz 503, no new jobs, DRAIN_TIMEOUT_S for requests in progress); see lifecycle
    from photolabel.adapters.http.server import protocol_for

    # http: uvicorn's h11 protocol with HEADER_TIMEOUT_S and BODY_TIMEOUT_S for slow clients (see server.py)
    serve_app(create_app(settings, import_models=models_dir), host=settings.api_host, port=settings.api_port,
              log_level="info", http=protocol_for(settings))


def _setting_problem(error: Any) -> str:
    """One bad setting of ``serve``, named as its variable; a token's value is never shown."""
    name = ".".join(str(part) for part in error["loc"]).upper()
    if not name or "TOKEN" in name:
        return f"{name + ': ' if name else ''}{error['msg']}"
    return f"{name}={error.get('input')!r}: {error['msg']}"


if __name__ == "__main__":  # pragma: no cover
    main()
