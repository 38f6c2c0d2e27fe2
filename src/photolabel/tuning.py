"""Choosing a head and its hyperparameters by k-fold cross-validation on the training split.

``TrainConfig.tune`` searches the configured head's grid (``Head.tune_grid``);
``preset="best"`` searches every registered head's grid. Both are fixed work, not a time
budget: the candidates, the folds and the rule that picks one are functions of the
config and the training images only, so the same inputs choose the same head and
parameters, and the model is byte-identical whatever the thread count.

* Folds (:data:`FOLD_RULE`): stratified by label, from image hashes and the seed. The
  validation split never enters the search; only the rows handed in (the training split) do.
* Scoring: each candidate is fitted on k - 1 folds and scored on the k-th by log-loss, also
  recording accuracy, with the head's probabilities (``Head.fit_for_search``: what a saved
  model would answer, up to float32 rounding). With class balancing both are weighted by the
  class weights.
* Selection (:data:`SELECTION_RULE`): the lowest mean log-loss; ties go to the earlier
  candidate.

A grid parameter that the config sets to something other than its default is held fixed
(the user chose it); the others are searched. The plan (:func:`search_plan`) enters the
model id, so a change of grids or rules gives new ids; the table of every candidate's fold
scores goes into ``metrics.json["tuning"]``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from photolabel.errors import ConfigError, DataError
from photolabel.hashing import sha256_bytes
from photolabel.heads import get_head_class, list_heads, make_head

if TYPE_CHECKING:
    from photolabel.config import TrainConfig

#: bump whenever the folds, the scoring or the selection change what a search chooses
SEARCH_VERSION = 2  # 2: preset best also scores a fine-tuned variant, its tail tuned once per fold
FOLDS = 5
SCORING = "log_loss"
#: probabilities are clipped to [LOG_LOSS_EPS, 1] before the log
LOG_LOSS_EPS = 1e-15
FOLD_RULE = (
    "per label, the distinct training images are ordered by sha256(f'{seed}:fold:{image_sha256}') and the "
    "i-th goes to fold i mod k, k = min(5, the fewest training images of any label)"
)
SELECTION_RULE = (
    "the lowest mean log-loss over the folds (accuracy recorded too; both weighted by the class weights when "
    "balance is on), compared to 9 decimals; a tie goes to the earlier candidate: grid order within a head, "
    "and with preset best the configured head first, then the others by name"
)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Candidate:
    """One point of a search: a head and every one of its hyperparameters."""

    head: str
    params: Mapping[str, Any]


def searches(config: TrainConfig) -> bool:
    """Whether training with ``config`` chooses its head by cross-validation."""
    return config.tune or config.preset == "best"


def searched_heads(config: TrainConfig) -> list[str]:
    """The heads a search covers: the configured one, then (preset best) every other registered head by name."""
    if config.preset == "best":
        return [config.head] + [name for name in list_heads() if name != config.head]
    return [config.head]


def _base_params(config: TrainConfig, head: str) -> dict[str, Any]:
    """The fixed parameters of ``head`` in a search: the config's for the configured head, else defaults."""
    cls = get_head_class(head)
    return dict(config.head_params) if head == config.head else cls.default_params()


def searched_grid(head: str, base_params: Mapping[str, Any]) -> dict[str, tuple[Any, ...]]:
    """The part of ``head``'s ``tune_grid`` that is searched: parameters at their default in ``base_params``."""
    cls = get_head_class(head)
    defaults = cls.default_params()
    return {name: tuple(values) for name, values in cls.tune_grid.items()
            if base_params.get(name, defaults[name]) == defaults[name]}


def grid_candidates(head: str, base_params: Mapping[str, Any]) -> list[Candidate]:
    """``head``'s candidates in grid order (the product over ``tune_grid``'s parameters in written order,
    the last varying fastest); a head without a grid has one candidate, ``base_params``."""
    cls = get_head_class(head)
    grid = searched_grid(head, base_params)
    names = list(grid)
    candidates = []
    for values in itertools.product(*(grid[name] for name in names)):
        params = dict(base_params)
        params.update(zip(names, values))
        candidates.append(Candidate(head, cls.check_params(params)))
    return candidates


# --- preset "best": the variants of the features ------------------------------------------------
# A search covers heads x their grids on one set of features: the backbone's embeddings of the
# training images. Augmentation (K augmented views per training image) and fine-tuning (a tuned
# backbone) change the features themselves; preset "best" lists them as feature variants (in the
# plan, so the model id covers them), each scored on the same folds. Rows of one image share its
# key, so an image's augmented views stay in one fold (see fold_assignment). The fine-tuned variant
# tunes the backbone's tail once per fold on that fold's training rows only (so no held-out image
# shaped the features it is scored on) and searches the configured head's grid only: a tail per
# fold is the expensive part, and every head's grid on it would multiply the time again.
#: the augmentation preset "best" tries when the config has none
PRESET_AUGMENT = 2


def feature_variants(config: TrainConfig) -> list[dict[str, Any]]:
    """The feature variants a search covers: the configured one, and with preset "best" (when the
    config has no augmentation and no fine-tuning) the same with PRESET_AUGMENT views per training
    image, and (for a network backbone) with the backbone's last block fine-tuned."""
    from photolabel.augment import AUGMENT_VERSION
    from photolabel.finetune import FINETUNABLE, FINETUNE_VERSION, RECIPE

    variants: list[dict[str, Any]] = [{"augment": config.augment, "finetune": config.finetune}]
    if config.preset == "best" and not config.augment:
        # the recipe's version is in the plan (so in the model id) when the search may choose views
        variants.append({"augment": PRESET_AUGMENT, "augment_version": AUGMENT_VERSION, "finetune": config.finetune})
        if not config.finetune and config.backbone in FINETUNABLE:
            variants.append({"augment": 0, "finetune": True, "finetune_version": FINETUNE_VERSION,
                             "finetune_recipe": RECIPE.to_dict(), "tail_tuned": "once per fold",
                             "heads": [config.head]})
    return variants


def variant_candidates(config: TrainConfig, variant: Mapping[str, Any]) -> list[Candidate]:
    """The candidates searched on ``variant``'s features: every candidate of the search, or those of the
    heads the variant names."""
    heads = variant.get("heads")
    return [c for c in search_candidates(config) if heads is None or c.head in heads]


def search_candidates(config: TrainConfig) -> list[Candidate]:
    """Every candidate of ``config``'s search, in tie-break order."""
    return [candidate for head in searched_heads(config)
            for candidate in grid_candidates(head, _base_params(config, head))]


def search_plan(config: TrainConfig) -> dict[str, Any] | None:
    """What the search of ``config`` is, as JSON (None when it has none): written into model.json and
    hashed into the model id, so changing a grid, a head version or a rule changes the id."""
    if not searches(config):
        return None
    heads = []
    for head in searched_heads(config):
        base = _base_params(config, head)
        heads.append({"head": head, "version": get_head_class(head).version,
                      "grid": {name: list(values) for name, values in searched_grid(head, base).items()}})
    return {"version": SEARCH_VERSION, "folds": FOLDS, "scoring": SCORING, "fold_rule": FOLD_RULE,
            "selection": SELECTION_RULE, "heads": heads, "features": feature_variants(config)}


def fold_assignment(y: np.ndarray, keys: Sequence[str], seed: int, folds: int = FOLDS, *,
                    labels: Sequence[str] | None = None) -> tuple[np.ndarray, int]:
    """(fold index of each row, k); see :data:`FOLD_RULE`. Rows with the same key share a fold;
    ``labels`` (the names of the label indices) are for the error message.

    Raises:
        DataError: a label has fewer than two distinct training images (no fold could hold one out).
    """
    y = np.asarray(y, dtype=np.int64)
    if len(keys) != len(y):
        raise ValueError(f"{len(keys)} keys for {len(y)} rows")
    per_label: dict[int, dict[str, None]] = {}  # distinct keys in order of appearance
    for label, key in zip(y.tolist(), keys):
        per_label.setdefault(label, {})[key] = None
    fewest_label, fewest = min(((label, len(group)) for label, group in sorted(per_label.items())),
                               key=lambda t: t[1])
    if fewest < 2:
        name = repr(labels[fewest_label]) if labels is not None else f"index {fewest_label}"
        raise DataError(f"cross-validation needs at least 2 training images of every label; label {name} has "
                        f"{fewest}")
    k = min(folds, fewest)
    fold_of: dict[tuple[int, str], int] = {}
    for label, group in per_label.items():
        ordered = sorted(group, key=lambda key: sha256_bytes(f"{seed}:fold:{key}".encode()))
        for i, key in enumerate(ordered):
            fold_of[(label, key)] = i % k
    return np.array([fold_of[(label, key)] for label, key in zip(y.tolist(), keys)], dtype=np.int64), k


def _fold_scores(probs: np.ndarray, y: np.ndarray, weight: np.ndarray) -> tuple[float, float]:
    picked = np.clip(probs[np.arange(len(y)), y], LOG_LOSS_EPS, 1.0)
    log_loss = float(np.sum(weight * -np.log(picked)) / np.sum(weight))
    accuracy = float(np.sum(weight * (np.argmax(probs, axis=1) == y)) / np.sum(weight))
    return log_loss, accuracy


def _rounded(value: float) -> float:
    return round(value, 9)


def cross_validate(candidates: Sequence[Candidate], seed: int, X: np.ndarray, y: np.ndarray, n_classes: int,
                   sample_weight: np.ndarray | None = None, *, keys: Sequence[str] | None = None,
                   scored: np.ndarray | None = None, threads: int = 1, labels: Sequence[str] | None = None,
                   on_progress: Progress | None = None,
                   fold_features: Callable[[int], np.ndarray] | None = None) -> tuple[Candidate, dict[str, Any]]:
    """Score each candidate on the same folds; return the chosen one and the table.

    ``keys`` name each row's image (its sha256; default: the row index) for the folds: rows of one
    image (its augmented views) share a fold. ``scored`` (a boolean mask; default all) says which
    held-out rows are scored: the images themselves, not their views. ``threads`` fits that many
    (candidate, fold) pairs at once, each on one BLAS thread; the table is the same whatever it is.
    A candidate that cannot be fitted on a fold (knn with more neighbours than rows, lda with fewer
    rows than labels: a ValueError) is listed as skipped; with several heads, so is a head that cannot
    weight classes. ``fold_features(h)`` (optional) gives
    every row's features for when fold h is held out (features learnt on the other folds only, such as a
    tail fine-tuned on them); it is called once per fold, in fold order, before any fit.

    Raises:
        ConfigError: a single head that cannot weight classes, with ``sample_weight``.
        DataError: too few images per label for two folds, or no candidate could be fitted.
    """
    X_all = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    fold, k = fold_assignment(y, keys if keys is not None else [str(i) for i in range(len(y))], seed,
                              labels=labels)
    scored = np.ones(len(y), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    several_heads = len({c.head for c in candidates}) > 1
    per_fold = ([np.asarray(fold_features(h), dtype=np.float64) for h in range(k)] if fold_features is not None
                else None)

    def score(task: tuple[int, int]) -> tuple[float, float] | ValueError:
        candidate, held_out = candidates[task[0]], task[1]
        X = per_fold[held_out] if per_fold is not None else X_all
        fit_rows = fold != held_out
        score_rows = ~fit_rows & scored
        try:
            head = make_head(candidate.head, seed=seed, params=candidate.params)
            predict_proba = head.fit_for_search(X[fit_rows], y[fit_rows], n_classes,
                                                sample_weight=None if sample_weight is None else weight[fit_rows])
            probs = predict_proba(X[score_rows])
        except ValueError as exc:  # ours (DataError, ConfigError) or the estimator's: too few rows in a fold, ...
            return exc
        log_loss, accuracy = _fold_scores(probs, y[score_rows], weight[score_rows])
        return _rounded(log_loss), _rounded(accuracy)

    tasks = [(index, held_out) for index in range(len(candidates)) for held_out in range(k)]
    # With class weights, each head's first fit runs first: a head that cannot weight classes is
    # then skipped without fitting its other candidates.
    first_of_head: dict[str, int] = {}
    for index, candidate in enumerate(candidates):
        first_of_head.setdefault(candidate.head, index)
    probes = [(index, 0) for index in first_of_head.values()] if sample_weight is not None else []
    outcomes = _run_tasks(score, probes, threads, on_progress, 0, len(tasks))
    refusals = {candidates[index].head: result for (index, _), result in outcomes.items()
                if isinstance(result, ConfigError) and result.field == "balance"}
    if refusals and not several_heads:
        raise next(iter(refusals.values()))
    unweightable = {head: str(refusal) for head, refusal in refusals.items()}
    rest = [task for task in tasks if task not in outcomes and candidates[task[0]].head not in unweightable]
    outcomes.update(_run_tasks(score, rest, threads, on_progress, len(tasks) - len(rest), len(tasks)))

    rows: list[dict[str, Any]] = []
    best: tuple[float, int] | None = None
    for index, candidate in enumerate(candidates):
        row: dict[str, Any] = {"head": candidate.head, "params": dict(candidate.params)}
        rows.append(row)
        if candidate.head in unweightable:
            row["skipped"] = unweightable[candidate.head]
            continue
        results = [outcomes[(index, held_out)] for held_out in range(k)]
        failure = next((result for result in results if isinstance(result, Exception)), None)
        if isinstance(failure, ConfigError):
            raise failure
        if failure is not None:
            row["skipped"] = str(failure)
            continue
        losses = [result[0] for result in results]  # type: ignore[index]
        accuracies = [result[1] for result in results]  # type: ignore[index]
        mean_loss = _rounded(float(np.mean(losses)))
        row.update(log_loss=losses, accuracy=accuracies, mean_log_loss=mean_loss,
                   mean_accuracy=_rounded(float(np.mean(accuracies))))
        if best is None or mean_loss < best[0]:
            best = (mean_loss, index)
    if best is None:
        reasons = "; ".join(sorted({str(row.get("skipped")) for row in rows}))
        raise DataError(f"no candidate of the search could be fitted: {reasons}")
    chosen = candidates[best[1]]
    table = {
        "scoring": SCORING, "folds": k, "fold_rule": FOLD_RULE, "selection": SELECTION_RULE,
        "weighted": sample_weight is not None,
        "chosen": {"head": chosen.head, "params": dict(chosen.params), "index": best[1]},
        "candidates": rows,
    }
    return chosen, table


def _run_tasks(score: Callable[[tuple[int, int]], Any], tasks: Sequence[tuple[int, int]], threads: int,
               on_progress: Progress | None, done: int, total: int) -> dict[tuple[int, int], Any]:
    """``score(task)`` of each task, ``threads`` at a time. The BLAS libraries are held to one thread for
    the whole run (threadpoolctl's limit is process-wide: a head leaving its own limit while another
    fits would otherwise lift it), so each fit gives the same bits whatever runs beside it."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from threadpoolctl import threadpool_limits

    results: dict[tuple[int, int], Any] = {}
    if not tasks:
        return results
    with threadpool_limits(limits=1):
        if threads <= 1:
            for task in tasks:
                results[task] = score(task)
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
            return results
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="photolabel-tune") as pool:
            futures = {pool.submit(score, task): task for task in tasks}
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
    return results


def tune_head(head_name: str, seed: int, given_params: Mapping[str, Any] | None, X: np.ndarray, y: np.ndarray,
              n_classes: int, sample_weight: np.ndarray | None = None, *, keys: Sequence[str] | None = None,
              threads: int = 1, on_progress: Progress | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(chosen parameters, table) of ``head_name`` over its ``tune_grid`` by k-fold cross-validation on
    ``X``, ``y`` (the training split only). ``given_params`` (checked; defaults filled) fixes the
    parameters outside the grid, and grid parameters given a value other than their default."""
    base = get_head_class(head_name).check_params(given_params)
    chosen, table = cross_validate(grid_candidates(head_name, base), seed, X, y, n_classes, sample_weight,
                                   keys=keys, threads=threads, on_progress=on_progress)
    return dict(chosen.params), table


def search(config: TrainConfig, X: np.ndarray, y: np.ndarray, n_classes: int,
           sample_weight: np.ndarray | None = None, *, keys: Sequence[str] | None = None,
           scored: np.ndarray | None = None, threads: int = 1, on_progress: Progress | None = None,
           variant: Mapping[str, Any] | None = None,
           fold_features: Callable[[int], np.ndarray] | None = None) -> tuple[Candidate, dict[str, Any]]:
    """The head and parameters ``config``'s search chooses on the training rows ``X``, ``y`` (see
    :func:`search_candidates`, or :func:`variant_candidates` of ``variant``; ``keys``, ``scored``, ``threads``
    and ``fold_features`` as in :func:`cross_validate`), and the table for ``metrics.json["tuning"]``."""
    candidates = variant_candidates(config, variant) if variant is not None else search_candidates(config)
    return cross_validate(candidates, config.seed, X, y, n_classes, sample_weight, keys=keys,
                          scored=scored, threads=threads, labels=config.classes, on_progress=on_progress,
                          fold_features=fold_features)
