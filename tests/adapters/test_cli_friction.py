"""Issue 10: what users ran into at the command line, each replayed as the user ran it (a subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from photolabel.adapters.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples" / "fashion-tiny"
LABELS = ["blouse", "halter", "sweater"]


def photolabel(*args: str | Path, cwd: Path, cache_dir: Path, env: dict[str, str] | None = None,
               stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """``photolabel ARGS`` as a user runs it: a new process, stdout and stderr piped."""
    environment = {**os.environ, "PHOTOLABEL_CACHE_DIR": str(cache_dir), **(env or {})}
    for name in ("RANDOM_SEED", "TRAIN_PERCENTAGE", "BATCH_SIZE", "EPOCHS", "COLUMNS"):
        if name not in (env or {}):
            environment.pop(name, None)
    return subprocess.run([sys.executable, "-m", "photolabel.adapters.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=environment, timeout=600, stdin=stdin)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """``tmp_path/DATA/<label>/``: four images per label, so training takes seconds."""
    root = tmp_path / "DATA"
    for label in LABELS:
        (root / label).mkdir(parents=True)
        for image in sorted((EXAMPLES / label).glob("*.jpg"))[:4]:
            shutil.copyfile(image, root / label / image.name)
    return root


# --- 2. -c/--classes no longer swallows DATA ------------------------------------------------------

def test_classes_before_data_as_the_user_typed_it(tiny: Path, tmp_path: Path, cache_dir: Path) -> None:
    run = photolabel("train", "-c", "halter", "blouse", "sweater", "DATA", "--out", "M", "--json",
                     cwd=tmp_path, cache_dir=cache_dir)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["labels"] == ["halter", "blouse", "sweater"]
    assert json.loads((tmp_path / "M" / "model.json").read_text())["labels"] == ["halter", "blouse", "sweater"]


@pytest.mark.parametrize("words", [
    ("-c", "sweater,blouse,halter"),
    ("-c", "sweater", "-c", "blouse", "-c", "halter"),
    ("--classes=sweater", "blouse", "halter"),
])
def test_classes_by_commas_repeated_or_greedy_after_data(words: tuple[str, ...]) -> None:
    context = main.commands["train"].make_context("train", ["DATA", *words, "--out", "M"])
    assert context.params["data"] == "DATA"
    from photolabel.dataset import parse_label_list

    assert parse_label_list(context.params["classes"]) == ("sweater", "blouse", "halter")


def test_classes_that_took_data_say_so(tmp_path: Path, cache_dir: Path) -> None:
    run = photolabel("train", "-c", "blouse", "halter", "nowhere", "--out", "M", cwd=tmp_path, cache_dir=cache_dir)
    assert run.returncode == 2
    assert "-c took 'blouse', 'halter', 'nowhere' as classes and left no DATA" in run.stderr
    assert "put DATA before -c" in run.stderr and "-c blouse,halter,nowhere" in run.stderr
    assert "Traceback" not in run.stderr


# --- 5. every option says what it does; --out has a default ------------------------------------------

def _commands(command: click.Command, path: tuple[str, ...] = ("photolabel",)):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for path, command in _commands(main):
        context = click.Context(command, info_name=path[-1])
        for param in command.get_params(context):
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {'/'.join(param.opts)}")
    assert not missing, missing


@pytest.mark.parametrize("command", ["train", "worker"])
def test_backbone_and_head_help_give_one_line_per_registered_choice(tmp_path: Path, cache_dir: Path,
                                                                   command: str) -> None:
    from photolabel.backbones import list_backbones
    from photolabel.heads import list_heads

    run = photolabel(command, "--help", cwd=tmp_path, cache_dir=cache_dir, env={"COLUMNS": "200"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for name in [*list_backbones(), *list_heads()]:
        line = next((line for line in lines if line.split()[:1] == [name]), None)
        assert line is not None, name
        assert len(line.split(maxsplit=1)[1]) > 20  # speed, accuracy and when to pick it, on its own line


def test_train_without_out_writes_models_model_id(tiny: Path, tmp_path: Path, cache_dir: Path) -> None:
    run = photolabel("train", "DATA", cwd=tmp_path, cache_dir=cache_dir)
    assert run.returncode == 0, run.stderr
    model_id = json.loads(next((tmp_path / "models").glob("*/model.json")).read_text())["model_id"]
    assert f"saved to  models/{model_id}" in run.stdout
    assert [p.name for p in (tmp_path / "models").iterdir()] == [model_id]
    again = photolabel("train", "DATA", "--json", cwd=tmp_path, cache_dir=cache_dir)  # the same model: replaced
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["model_dir"] == f"models/{model_id}"
    assert [p.name for p in (tmp_path / "models").iterdir()] == [model_id]


# --- 4. off a terminal, one line per stage, and the count every few seconds -----------------------------

def test_stage_lines_report_each_stage_and_the_count_every_few_seconds() -> None:
    import io

    from photolabel.progress import StageLines

    now = [0.0]
    stream = io.StringIO()
    lines = StageLines(stream, every=5.0, clock=lambda: now[0])
    lines("reading", 0, 0)
    lines("hashing", 300, 300)
    for done in range(32, 300, 32):  # a batch a second
        now[0] += 1.0
        lines("embedding", done, 300)
    lines("embedding", 300, 300)
    lines("fitting", 0, 0)
    lines("writing", 0, 0)
    lines("done", 1, 1)
    assert stream.getvalue().splitlines() == [
        "reading the data", "hashed 300 image(s)", "embedding 32/300", "embedding 192/300", "embedding 300/300",
        "fitting the head", "writing the model"]


# --- 6. duplicate images are reported -----------------------------------------------------------------

def test_duplicates_are_reported_in_the_summary_json_and_metrics(tiny: Path, tmp_path: Path,
                                                                cache_dir: Path) -> None:
    import hashlib

    first = min((tiny / "blouse").glob("*.jpg"))
    shutil.copyfile(first, tiny / "blouse" / "again.jpg")
    shutil.copyfile(first, tiny / "blouse" / "zz-third.jpg")
    sha256 = hashlib.sha256(first.read_bytes()).hexdigest()
    shown = f"blouse/{first.name} = blouse/again.jpg = blouse/zz-third.jpg"

    text = photolabel("train", "DATA", "--out", "M", cwd=tmp_path, cache_dir=cache_dir)
    assert text.returncode == 0, text.stderr
    assert f"duplicates 2 image(s) listed again with the same bytes, trained on once: {shown}" in text.stdout

    moved = tmp_path / "elsewhere" / "DATA"
    shutil.copytree(tiny, moved)
    run = photolabel("train", moved, "--out", "N", "--json", cwd=tmp_path, cache_dir=cache_dir)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["duplicates"] == {
        "count": 2,
        "examples": [{"sha256": sha256, "label": "blouse",
                      "sources": [f"blouse/{first.name}", "blouse/again.jpg", "blouse/zz-third.jpg"]}]}
    metrics = (tmp_path / "M" / "metrics.json").read_bytes()
    assert json.loads(metrics)["duplicates"] == {"count": 2, "sha256": [sha256]}
    assert metrics == (tmp_path / "N" / "metrics.json").read_bytes()  # no path in it: the same from anywhere
    assert str(tmp_path) not in metrics.decode()
    run_json = json.loads((tmp_path / "N" / "run.json").read_text())
    assert run_json["duplicates"][0]["sources"][1:] == ["blouse/again.jpg", "blouse/zz-third.jpg"]


# --- 8. the confusion matrix fits the terminal; macro-F1 and log-loss are shown -------------------------

def test_nine_long_labels_fit_the_terminal_and_the_report_has_every_score(tmp_path: Path,
                                                                          cache_dir: Path) -> None:
    images = sorted(EXAMPLES.glob("*/*.jpg"))
    labels = [f"{name}-with-a-long-descriptive-name-{k}"
              for k, name in enumerate(["coat", "dress", "blouse", "halter", "sweater", "shirt", "skirt", "jeans",
                                        "parka"])]
    root = tmp_path / "DATA"
    for k, label in enumerate(labels):
        (root / label).mkdir(parents=True)
        for image in images[3 * k:3 * k + 3]:
            shutil.copyfile(image, root / label / image.name)
    trained = photolabel("train", "DATA", "--out", "M", "--valid-fraction", "0.34", cwd=tmp_path,
                         cache_dir=cache_dir, env={"COLUMNS": "100"})
    assert trained.returncode == 0, trained.stderr
    run = photolabel("evaluate", "M", "DATA", "--report", "report", cwd=tmp_path, cache_dir=cache_dir,
                     env={"COLUMNS": "100"})
    assert run.returncode == 0, run.stderr
    for output in (trained.stdout, run.stdout):
        lines = output.splitlines()
        start = next(k for k, line in enumerate(lines) if "confusion matrix" in line)
        matrix = lines[start:start + 3 + len(labels)]  # the title, the note, the header, a row per label
        assert max(len(line) for line in matrix) <= 100, "\n".join(matrix)
        assert "columns numbered to fit the terminal; the full matrix: --json, or photolabel evaluate --report DIR" \
            in output
    metrics = json.loads(photolabel("evaluate", "M", "DATA", "--json", cwd=tmp_path, cache_dir=cache_dir).stdout)
    assert f"macro-F1 {metrics['macro_f1']:.4f}, log-loss {metrics['log_loss']:.4f}" in run.stdout
    assert f"9 {sorted(labels)[8]}  " in run.stdout  # rows keep their label, numbered as the columns
    page = (tmp_path / "report" / "report.html").read_text()
    assert f"macro-F1 {metrics['macro_f1']:.4f}, log-loss {metrics['log_loss']:.4f}" in page
    assert all(label in page for label in labels)  # the full matrix
    wide = photolabel("evaluate", "M", "DATA", cwd=tmp_path, cache_dir=cache_dir, env={"COLUMNS": "400"})
    cell = max(map(len, labels))
    assert "numbered" not in wide.stdout
    assert " ".join(f"{label:>{cell}}" for label in sorted(labels)[:2]) in wide.stdout  # labels over the columns
