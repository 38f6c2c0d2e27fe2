"""Metrics of a classifier on labelled embeddings, and a readable report."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

_DIGITS = 6


def _round(value: float) -> float:
    return round(float(value), _DIGITS)


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, labels: Sequence[str], *,
                           unknown: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix (rows: true, columns: predicted).

    The scores are those of the top label, whether or not the model answered unknown;
    ``unknown`` (the (far, unsure) flags of :meth:`photolabel.openset.Postprocessor.unknown_tests`)
    adds how many images the model answered unknown for (see :func:`unknown_summary`).
    Values are rounded to 6 decimals so that the JSON they go into is stable.
    """
    n_classes = len(labels)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.argmax(probabilities, axis=1) if len(y_true) else np.zeros(0, dtype=np.int64)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class: dict[str, dict[str, float | int]] = {}
    for k, label in enumerate(labels):
        tp = int(confusion[k, k])
        predicted = int(confusion[:, k].sum())
        actual = int(confusion[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": _round(precision),
            "recall": _round(recall),
            "f1": _round(f1),
            "support": actual,
        }
    total = len(y_true)
    correct = int(np.trace(confusion))
    supported = [m for m in per_class.values() if m["support"]]
    macro_f1 = sum(float(m["f1"]) for m in supported) / len(supported) if supported else 0.0
    log_loss = None
    if total:
        picked = np.clip(probabilities[np.arange(total), y_true], 1e-15, 1.0)
        log_loss = _round(-np.mean(np.log(picked)))
    return {
        "n": total,
        "accuracy": _round(correct / total) if total else None,
        "macro_f1": _round(macro_f1),
        "log_loss": log_loss,
        "labels": list(labels),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        **({"unknown": unknown_summary(*unknown)} if unknown is not None else {}),
    }


def unknown_summary(far: np.ndarray, unsure: np.ndarray) -> dict[str, Any]:
    """How many images were answered unknown: ``count`` and ``rate`` of ``n``, and how many by each
    test (``far`` from every class, ``unsure``: top probability too low; an image may fail both)."""
    either = np.asarray(far, dtype=bool) | np.asarray(unsure, dtype=bool)
    n = len(either)
    return {"n": n, "count": int(either.sum()), "rate": _round(either.mean()) if n else None,
            "far": int(np.sum(far)), "unsure": int(np.sum(unsure))}


def format_metrics(metrics: dict[str, Any], width: int | None = None) -> str:
    """A plain-text table for the terminal, at most ``width`` columns wide where it can be (default: the
    terminal's width, or COLUMNS). A confusion matrix too wide for it numbers its columns and shortens the
    row labels; the full one is in the JSON and the report."""
    import shutil

    if width is None:
        width = shutil.get_terminal_size((100, 24)).columns
    labels = metrics["labels"]
    name_width = max([len(label) for label in labels] + [9])
    lines = []
    accuracy = metrics["accuracy"]
    lines.append(f"accuracy {accuracy:.4f} on {metrics['n']} images" + _scores_text(metrics)
                 if accuracy is not None else "no images to evaluate")
    unknown = metrics.get("unknown")
    if unknown and unknown.get("n"):
        lines.append(f"answered unknown for {unknown['count']} of {unknown['n']} images ({100 * unknown['rate']:.1f}%: "
                     f"{unknown['far']} unlike the training images, {unknown['unsure']} not confident enough); "
                     "accuracy counts their top label")
    lines.append(f"{'label':<{name_width}}  precision  recall     f1  support")
    for label in labels:
        m = metrics["per_class"][label]
        lines.append(
            f"{label:<{name_width}}  {m['precision']:>9.4f}  {m['recall']:>6.4f}  {m['f1']:>5.4f}  {m['support']:>7}"
        )
    lines.extend(_confusion_lines(labels, metrics["confusion_matrix"], name_width, width))
    return "\n".join(lines)


def _scores_text(metrics: dict[str, Any]) -> str:
    """``, macro-F1 x, log-loss y`` for what the metrics hold."""
    parts = []
    if metrics.get("macro_f1") is not None:
        parts.append(f"macro-F1 {metrics['macro_f1']:.4f}")
    if metrics.get("log_loss") is not None:
        parts.append(f"log-loss {metrics['log_loss']:.4f}")
    return "".join(f", {part}" for part in parts)


def _shorten(text: str, size: int) -> str:
    return text if len(text) <= size else text[:max(size - 1, 1)] + "…"


def _confusion_lines(labels: Sequence[str], matrix: Sequence[Sequence[int]], name_width: int,
                     width: int) -> list[str]:
    """The confusion matrix as text lines: labels over the columns when that fits in ``width``; otherwise
    the columns are numbered as the rows (``1 blouse``) and the row labels shortened to fit."""
    cell = max([len(str(v)) for row in matrix for v in row] + [len(label) for label in labels] + [1])
    if name_width + 2 + len(labels) * (cell + 1) <= width:
        lines = ["confusion matrix (rows: true label, columns: predicted)",
                 " " * (name_width + 2) + " ".join(f"{label:>{cell}}" for label in labels)]
        lines.extend(f"{label:<{name_width}}  " + " ".join(f"{v:>{cell}}" for v in row)
                     for label, row in zip(labels, matrix))
        return lines
    cell = max([len(str(v)) for row in matrix for v in row] + [len(str(len(labels)))])
    numbered = [f"{k} {label}" for k, label in enumerate(labels, start=1)]
    room = width - 2 - len(labels) * (cell + 1)
    row_width = max(min(max(len(name) for name in numbered), room), 8)
    lines = ["confusion matrix (rows: true label, columns: predicted, numbered as the rows)",
             "columns numbered to fit the terminal; the full matrix: --json, or photolabel evaluate --report DIR",
             " " * (row_width + 2) + " ".join(f"{k:>{cell}}" for k in range(1, len(labels) + 1))]
    lines.extend(f"{_shorten(name, row_width):<{row_width}}  " + " ".join(f"{v:>{cell}}" for v in row)
                 for name, row in zip(numbered, matrix))
    return lines


def write_report(metrics: dict[str, Any], folder: str | Path, *, title: str = "photolabel evaluation") -> list[Path]:
    """Write ``confusion_matrix.png`` and ``report.html`` (self-contained) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = folder / "confusion_matrix.png"
    _confusion_png(metrics, png)
    page = folder / "report.html"
    page.write_text(_report_html(metrics, title), encoding="utf-8")
    return [png, page]


def _confusion_png(metrics: dict[str, Any], path: Path) -> None:
    from PIL import Image, ImageDraw, ImageFont

    labels = metrics["labels"]
    matrix = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    n = len(labels)
    font = ImageFont.load_default()
    cell, margin_left, margin_top = 64, 12 + 7 * max(len(label) for label in labels), 40
    width, height = margin_left + cell * n + 12, margin_top + cell * n + 40
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    row_totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_totals, out=np.zeros_like(matrix), where=row_totals > 0)
    for i in range(n):
        for j in range(n):
            shade = int(255 - 200 * shares[i, j])
            x0, y0 = margin_left + j * cell, margin_top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 2, y0 + cell - 2], fill=(shade, shade, 255))
            text = str(int(matrix[i, j]))
            draw.text((x0 + cell / 2 - 3 * len(text), y0 + cell / 2 - 6), text, fill="black", font=font)
        draw.text((6, margin_top + i * cell + cell / 2 - 6), labels[i], fill="black", font=font)
        draw.text((margin_left + i * cell + 4, margin_top - 16), labels[i][:10], fill="black", font=font)
    draw.text((6, 6), "rows: true label, columns: predicted", fill="black", font=font)
    accuracy = metrics["accuracy"]
    footer = f"accuracy {accuracy:.4f} on {metrics['n']} images" if accuracy is not None else "no images"
    draw.text((6, height - 24), footer, fill="black", font=font)
    image.save(path, format="PNG", optimize=False)


def _report_html(metrics: dict[str, Any], title: str) -> str:
    labels = metrics["labels"]
    matrix = metrics["confusion_matrix"]
    esc = html.escape
    rows = []
    for label, row in zip(labels, matrix):
        total = sum(row) or 1
        cells = "".join(
            f'<td style="background:rgba(60,90,220,{v / total:.3f})">{v}</td>' for v in row
        )
        rows.append(f"<tr><th>{esc(label)}</th>{cells}</tr>")
    per_class = "".join(
        f"<tr><th>{esc(label)}</th><td>{m['precision']:.4f}</td><td>{m['recall']:.4f}</td>"
        f"<td>{m['f1']:.4f}</td><td>{m['support']}</td></tr>"
        for label, m in metrics["per_class"].items()
    )
    accuracy = metrics["accuracy"]
    summary = (f"accuracy {accuracy:.4f} on {metrics['n']} images" + _scores_text(metrics)
               if accuracy is not None else "no images")
    unknown = metrics.get("unknown")
    if unknown and unknown.get("n"):
        summary += f"; answered unknown for {unknown['count']} ({100 * unknown['rate']:.1f}%)"
    head = "".join(f"<th>{esc(label)}</th>" for label in labels)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.4em .8em;text-align:right}}</style></head>
<body><h1>{esc(title)}</h1><p>{esc(summary)}</p>
<h2>Per class</h2><table><tr><th>label</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>
{per_class}</table>
<h2>Confusion matrix</h2><p>rows: true label, columns: predicted</p>
<table><tr><th></th>{head}</tr>{"".join(rows)}</table>
<img src="confusion_matrix.png" alt="confusion matrix"></body></html>
"""
