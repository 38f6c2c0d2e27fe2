"""``photolabel worker`` (seed 000) driven as a real subprocess through its pipes.

Every test starts ``python -m photolabel.adapters.cli worker ...`` with the session's
cache, writes one command line and reads one answer line with a timeout (a reader
thread feeds a queue, so a silent worker fails the test instead of hanging it), and
always ends the process in a ``finally``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
EXAMPLES = REPO / "examples" / "fashion-tiny"
HEX64 = r"[0-9a-f]{64}"
START_TIMEOUT = 120.0  # the first start of a session may export the backbone
ANSWER_TIMEOUT = 60.0

# Held-out images (not in any training set below) that the small models label correctly.
BLOUSE_IMAGE = "blouse/1094.jpg"
HALTER_IMAGE = "halter/1097.jpg"


def images(label: str, start: int, stop: int) -> list[Path]:
    """Images ``start`` to ``stop - 1`` (sorted by name) of ``label`` in fashion-tiny."""
    return sorted((EXAMPLES / label).glob("*.jpg"))[start:stop]


def make_archive(path: Path, members: dict[str, Path], symlinks: dict[str, str] | None = None) -> Path:
    """A .tar.gz holding ``members`` (archive name -> file) and ``symlinks`` (name -> target)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, source in members.items():
            archive.add(source, arcname=name)
        for name, target in (symlinks or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return path


def labelled(labels_and_ranges: dict[str, tuple[int, int]], prefix: str = "") -> dict[str, Path]:
    return {f"{prefix}{label}/{image.name}": image
            for label, (start, stop) in labels_and_ranges.items() for image in images(label, start, stop)}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed 000's files: dataset.tar.gz (blouse, halter), train.tar.gz (``<label>/<image>`` at the
    root), valid.tar.gz (under one wrapping folder), and a few held-out test images."""
    root = tmp_path_factory.mktemp("worker-archives")
    make_archive(root / "dataset.tar.gz", labelled({"blouse": (0, 20), "halter": (0, 20)}))
    make_archive(root / "train.tar.gz", labelled({"blouse": (20, 30), "halter": (20, 30)}))
    make_archive(root / "valid.tar.gz", labelled({"blouse": (30, 34), "halter": (30, 34)}, prefix="held-out/"))
    # a lone valid/ wrapper: the split layout with only a validation part (labels inside it)
    make_archive(root / "in-valid.tar.gz", labelled({"blouse": (30, 32), "halter": (30, 32)}, prefix="valid/"))
    shutil.copyfile(EXAMPLES / BLOUSE_IMAGE, root / "blouse.jpg")
    shutil.copyfile(EXAMPLES / HALTER_IMAGE, root / "halter.jpg")
    return root


@pytest.fixture
def workdir(tmp_path: Path, archives: Path) -> Path:
    """A fresh working directory holding the archives and test images (bare-name resolution)."""
    for item in archives.iterdir():
        shutil.copyfile(item, tmp_path / item.name)
    (tmp_path / "tmp").mkdir()
    return tmp_path


def worker_env(cache_dir: Path, cwd: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANDOM_SEED", "TRAIN_PERCENTAGE", "BATCH_SIZE")}
    env.update(PHOTOLABEL_CACHE_DIR=str(cache_dir), TMPDIR=str(cwd / "tmp"), **extra)
    return env


class Worker:
    """One ``photolabel worker`` process: ``ask`` writes a line and returns the next answer line."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "photolabel.adapters.cli", "worker", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", cwd=cwd, env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout: list[str] = []  # every line the worker printed, in order
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    def _pump(self, stream: object, lines: queue.Queue[str | None]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stdout.append(line)
            lines.put(line.rstrip("\n"))
        lines.put(None)

    def _drain(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.stderr.append(line)

    def read(self, timeout: float = ANSWER_TIMEOUT) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no answer within {timeout} s; stderr: {''.join(self.stderr)[-2000:]}")
        if line is None:
            self.proc.wait(timeout=10)
            pytest.fail(f"the worker closed stdout (exit {self.proc.returncode}); "
                        f"stderr: {''.join(self.stderr)[-2000:]}")
        return line

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def ask(self, line: str, timeout: float = ANSWER_TIMEOUT) -> str:
        self.send(line)
        return self.read(timeout)

    def ask_json(self, line: str, timeout: float = ANSWER_TIMEOUT) -> dict:
        return json.loads(self.ask(line, timeout))

    def ready(self) -> str:
        return self.read(START_TIMEOUT)

    def finish(self, timeout: float = 30.0) -> int:
        """Close stdin (EOF) if still open and wait for the exit code."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        return self.proc.wait(timeout=timeout)

    def rest(self, timeout: float = 10.0) -> list[str]:
        """The lines printed after the last one read, up to EOF (call after the process ended)."""
        rest: list[str] = []
        while (line := self.lines.get(timeout=timeout)) is not None:
            rest.append(line)
        return rest

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None and not stream.closed:
                with contextlib.suppress(OSError):  # a broken pipe on flush
                    stream.close()


@pytest.fixture
def start(cache_dir: Path, workdir: Path) -> Iterator:
    """``start(*args, cwd=workdir, **env)``: a running worker, terminated after the test whatever happens."""
    started: list[Worker] = []

    def run(*args: str, cwd: Path = workdir, **env: str) -> Worker:
        worker = Worker(args, cwd, worker_env(cache_dir, workdir, **env))
        started.append(worker)
        return worker

    try:
        yield run
    finally:
        for worker in started:
            worker.stop()


def leftovers(workdir: Path) -> list[Path]:
    """Extracted archives (photolabel-*) the worker left in its temporary folder."""
    return sorted((workdir / "tmp").glob("photolabel-*"))


def model_id_of(worker: Worker) -> str:
    answer = worker.ask_json("info")
    assert answer["ok"] is True
    return answer["model_id"]


# -- seed 000's flow, plain text -------------------------------------------------------------

def test_seed_000_flow_predict_train_predict_info_quit(start, workdir: Path) -> None:
    worker = start("-d", "dataset", "-c", "blouse", "halter")
    ready = worker.ready()
    match = re.fullmatch(rf"ready: model ({HEX64}) \(trained; labels: blouse, halter\)", ready)
    assert match, ready
    first_id = match.group(1)

    assert worker.ask("predict blouse.jpg") == "blouse"  # the label alone, like the seed
    assert worker.ask("predict halter.jpg") == "halter"

    trained = worker.ask("train train.tar.gz valid.tar.gz")
    match = re.fullmatch(rf"Model Successfully Trained ({HEX64})", trained)
    assert match, trained
    second_id = match.group(1)
    assert second_id != first_id
    assert (workdir / "photolabel-worker" / "models" / second_id / "model.json").is_file()

    assert worker.ask("predict blouse.jpg") == "blouse"
    info = worker.ask("info")
    assert info.startswith(f"model {second_id} labels: blouse, halter; 68 images;"), info
    helped = worker.ask("help")
    assert helped.startswith("commands: predict IMAGE")
    worker.send("quit")
    assert worker.proc.wait(timeout=30) == 0
    assert worker.rest() == []

    # piped: nothing on stdout but the answers, one line each (no prompt text)
    answers = [ready, "blouse", "halter", trained, "blouse", info, helped]
    assert "".join(worker.stdout) == "".join(f"{answer}\n" for answer in answers)
    # the extracted archives are gone with the worker, and no retrain staging is left
    assert leftovers(workdir) == []
    assert not list((workdir / "photolabel-worker" / "models").glob(".incoming-*"))


def test_eof_ends_the_worker_and_a_restart_loads_the_same_model(start, workdir: Path) -> None:
    first = start("-d", "dataset", "-c", "blouse", "halter")
    match = re.fullmatch(rf"ready: model ({HEX64}) \(trained; labels: blouse, halter\)", first.ready())
    assert match
    assert first.finish() == 0  # EOF on stdin: exit 0
    assert first.rest() == []

    again = start("-d", "dataset", "-c", "blouse", "halter")
    assert again.ready() == f"ready: model {match.group(1)} (loaded; labels: blouse, halter)"
    assert again.ask("predict halter.jpg") == "halter"
    # SIGTERM unwinds cleanly: exit 128 + 15, nothing left in the temporary folder
    again.proc.terminate()
    assert again.proc.wait(timeout=30) == 143
    assert leftovers(workdir) == []


def test_a_start_that_fails_says_why_and_exits_1(start) -> None:
    worker = start("-d", "nosuch", "-c", "blouse", "halter")
    assert worker.proc.wait(timeout=60) == 1
    assert worker.rest() == []  # nothing on stdout in text mode
    assert "nosuch" in "".join(worker.stderr)


# -- bad input never ends the worker nor changes its model ---------------------------------------

@pytest.fixture
def bad_inputs(workdir: Path) -> dict[str, tuple[str, str]]:
    """command -> (expected error code, text the message must contain)."""
    (workdir / "corrupt.jpg").write_text("these are not the bytes of a JPEG\n")
    (workdir / "truncated.jpg").write_bytes((EXAMPLES / BLOUSE_IMAGE).read_bytes()[:3000])
    (workdir / "evil-source.jpg").write_bytes((EXAMPLES / BLOUSE_IMAGE).read_bytes())
    make_archive(workdir / "unknown.tar.gz", labelled({"blouse": (40, 42), "sweater": (0, 2)}))
    make_archive(workdir / "evil.tar.gz", {**labelled({"blouse": (40, 42)}),
                                           "../evil.jpg": workdir / "evil-source.jpg"})
    make_archive(workdir / "link.tar.gz", labelled({"blouse": (40, 42)}), symlinks={"halter/x.jpg": "/etc/passwd"})
    make_archive(workdir / "empty.tar.gz", {})
    return {
        "frobnicate now": ("bad_command", "frobnicate"),
        "predict": ("bad_command", "usage: predict IMAGE"),
        "predict missing.jpg": ("bad_image", "missing.jpg"),
        "predict corrupt.jpg": ("not_an_image", "corrupt.jpg"),
        "predict truncated.jpg": ("bad_image", "truncated.jpg"),
        "train unknown.tar.gz valid.tar.gz": ("bad_data", "sweater"),
        "train evil.tar.gz valid.tar.gz": ("unsafe_archive", "../evil.jpg"),
        "train link.tar.gz valid.tar.gz": ("unsafe_archive", "halter/x.jpg"),
        "train empty.tar.gz valid.tar.gz": ("bad_data", "empty.tar.gz"),
        "train nowhere.tar.gz valid.tar.gz": ("not_found", "nowhere.tar.gz"),
        "train train.tar.gz nowhere.tar.gz": ("not_found", "nowhere.tar.gz"),
        "train train.tar.gz": ("bad_command", "usage: train"),
        'predict "unclosed.jpg': ("bad_command", "cannot parse"),
    }


def test_bad_input_gets_an_error_and_the_same_model_keeps_answering(
        start, workdir: Path, bad_inputs: dict[str, tuple[str, str]]) -> None:
    # strict decoding, as under a UTF-8 locale: a stray byte must not end the worker either
    worker = start("-d", "dataset", "-c", "blouse", "halter", "--json", PYTHONIOENCODING="utf-8:strict")
    ready = json.loads(worker.ready())
    model_id = ready["model_id"]
    good = worker.ask_json("predict blouse.jpg")
    assert (good["ok"], good["label"], good["model_id"]) == (True, "blouse", model_id)

    for command, (code, named) in bad_inputs.items():
        answer = worker.ask_json(command)
        assert answer["ok"] is False, (command, answer)
        assert answer["error"]["code"] == code, (command, answer)
        assert named in answer["error"]["message"], (command, answer)
        assert "\n" not in answer["error"]["message"]
        again = worker.ask_json("predict blouse.jpg")
        assert (again["ok"], again["label"], again["model_id"]) == (True, "blouse", model_id), command
        assert model_id_of(worker) == model_id, command

    assert worker.proc.stdin is not None
    worker.proc.stdin.buffer.write(b"predict \xff\xfe.jpg\n")  # not UTF-8
    worker.proc.stdin.flush()
    answer = json.loads(worker.read())
    assert answer["ok"] is False and answer["error"]["code"] == "bad_image"
    assert worker.ask_json("predict halter.jpg")["label"] == "halter"

    worker.send("quit")
    assert worker.proc.wait(timeout=30) == 0
    # nothing escaped the archives: no evil.jpg anywhere near, no extraction or staging left over
    assert not list(workdir.parent.rglob("evil.jpg"))
    assert leftovers(workdir) == []
    assert [p.name for p in (workdir / "photolabel-worker" / "models").iterdir()] == [model_id]


# -- --json: every answer type parses ----------------------------------------------------------------

def test_json_answers(start) -> None:
    worker = start("-d", "dataset", "-c", "blouse", "halter", "--json")
    ready = json.loads(worker.ready())
    assert ready["ok"] is True and ready["ready"] is True and ready["loaded"] is False
    assert re.fullmatch(HEX64, ready["model_id"]) and ready["labels"] == ["blouse", "halter"]

    predicted = worker.ask_json("predict halter.jpg")
    assert predicted["ok"] is True and predicted["best"] == "halter"
    assert predicted["model_id"] == ready["model_id"] and predicted["image"] == "halter.jpg"
    assert set(predicted["scores"]) == {"blouse", "halter"}
    assert sum(predicted["scores"].values()) == pytest.approx(1.0, abs=1e-6)
    assert max(predicted["scores"], key=predicted["scores"].get) == "halter"
    assert re.fullmatch(HEX64, predicted["sha256"])

    helped = worker.ask_json("help")
    assert helped["ok"] is True and "predict IMAGE" in helped["help"]
    assert worker.ask_json("") == {"ok": True, "empty": True}  # one line in, one line out

    info = worker.ask_json("info")
    assert info["ok"] is True and info["model_id"] == ready["model_id"]
    assert info["labels"] == ["blouse", "halter"] and info["n_images"] == 40
    assert (info["backbone"], info["head"]) == ("efficientnet-lite1", "logistic")  # the defaults

    trained = worker.ask_json("train train.tar.gz valid.tar.gz")
    assert trained["ok"] is True and trained["message"] == "Model Successfully Trained"
    assert re.fullmatch(HEX64, trained["model_id"]) and trained["model_id"] != ready["model_id"]
    assert trained["labels"] == ["blouse", "halter"] and trained["added"] == 28
    assert 0.0 <= trained["validation_accuracy"] <= 1.0

    after = worker.ask_json("predict halter.jpg")
    assert after["best"] == "halter" and after["model_id"] == trained["model_id"]
    assert worker.ask_json("info")["n_images"] == 68
    assert worker.ask_json("quit") == {"ok": True, "quit": True}
    assert worker.proc.wait(timeout=30) == 0
    assert worker.rest() == []


# -- incremental training: union equality and label order ------------------------------------------

def cli(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "photolabel.adapters.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def copy_images(folder: Path, labels_and_ranges: dict[str, tuple[int, int]]) -> Path:
    for name, image in labelled(labels_and_ranges).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, folder / name)
    return folder


def test_cli_train_from_a_model_equals_training_once_on_the_union(tmp_path: Path, cache_dir: Path) -> None:
    env = worker_env(cache_dir, tmp_path)
    (tmp_path / "tmp").mkdir()
    first = {"blouse": (0, 12), "halter": (0, 12)}
    added = {"blouse": (50, 55), "sweater": (0, 12)}  # disjoint images; one new label
    copy_images(tmp_path / "A", first)
    copy_images(tmp_path / "B", added)
    copy_images(copy_images(tmp_path / "UNION", first), added)

    cli("train", "A", "--out", "base", "-q", cwd=tmp_path, env=env)
    cli("train", "B", "--out", "grown", "--from", "base", "-q", cwd=tmp_path, env=env)
    cli("train", "UNION", "--out", "once", "--classes", "blouse", "halter", "sweater", "-q",
        cwd=tmp_path, env=env)

    grown = {p.relative_to(tmp_path / "grown") for p in (tmp_path / "grown").rglob("*") if p.is_file()}
    once = {p.relative_to(tmp_path / "once") for p in (tmp_path / "once").rglob("*") if p.is_file()}
    assert grown == once and Path("model.json") in grown
    for name in sorted(grown - {Path("run.json")}):
        assert (tmp_path / "grown" / name).read_bytes() == (tmp_path / "once" / name).read_bytes(), name
    assert json.loads((tmp_path / "grown" / "model.json").read_text())["labels"] == ["blouse", "halter", "sweater"]


def test_worker_retrain_appends_a_new_label_after_the_original_order(start, workdir: Path) -> None:
    make_archive(workdir / "start.tar.gz", labelled({"sweater": (0, 15), "halter": (0, 15)}))
    make_archive(workdir / "more.tar.gz", labelled({"blouse": (0, 15), "halter": (40, 45)}))
    make_archive(workdir / "check.tar.gz", labelled({"blouse": (30, 33), "sweater": (30, 33)}, prefix="check/"))
    worker = start("-d", "start", "--json")  # no -c: a new label is allowed
    ready = json.loads(worker.ready())
    assert ready["labels"] == ["halter", "sweater"]  # sorted by name without -c
    trained = worker.ask_json("train more.tar.gz in-valid.tar.gz")  # valid/<label>/...: labels, not "valid"
    assert trained["ok"] is True and "valid" not in trained["labels"], trained
    assert trained["ok"] is True, trained
    info = worker.ask_json("info")
    assert info["labels"] == ["halter", "sweater", "blouse"]  # kept, then appended (not re-sorted)
    predicted = worker.ask_json("predict blouse.jpg")
    assert predicted["label"] == "blouse" and list(predicted["scores"]) == ["halter", "sweater", "blouse"]
    assert worker.finish() == 0


# -- the demo -----------------------------------------------------------------------------------------

def test_demo_script_runs(tmp_path: Path, cache_dir: Path) -> None:
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, str(REPO / "examples" / "demo.py")], capture_output=True, text=True,
                          cwd=tmp_path, env=worker_env(cache_dir, tmp_path), timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Model Successfully Trained" in done.stdout
    assert ">>> predict" in done.stdout and ">>> quit" in done.stdout


def test_a_terminal_on_stdin_gets_a_prompt(tmp_path: Path, cache_dir: Path) -> None:
    import pty

    make_archive(tmp_path / "dataset.tar.gz", labelled({"blouse": (0, 10), "halter": (0, 10)}))
    leader, follower = pty.openpty()
    try:
        worker = subprocess.Popen([sys.executable, "-m", "photolabel.adapters.cli", "worker", "-d", "dataset"],
                                  stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
                                  env={**os.environ, "PHOTOLABEL_CACHE_DIR": str(cache_dir)})
        os.write(leader, b"help\nquit\n")
        out, _ = worker.communicate(timeout=120)
    finally:
        os.close(leader)
        os.close(follower)
    assert worker.returncode == 0
    lines = out.decode().split("\n")
    assert lines[0].startswith("ready: model ")
    assert lines[1].startswith("photolabel> commands: predict IMAGE")


@pytest.mark.parametrize(("args", "needle"), [
    (("--seed", "-1"), "seed must be in 0..4294967295"),
    (("--head-param", "C=0"), "head parameter C=0"),
    (("--head", "nb", "--head-param", "C=1"), "no parameter 'C'"),
])
def test_a_bad_setting_is_the_first_answer_ok_false(start, args: tuple[str, ...], needle: str) -> None:
    worker = start("-d", "dataset", "-c", "blouse", "halter", "--json", *args)
    answer = json.loads(worker.ready())
    assert answer["ok"] is False and answer["error"]["code"] == "invalid_config", answer
    assert needle in answer["error"]["message"]
    assert worker.proc.wait(timeout=60) == 1


# -- the answer "unknown" ----------------------------------------------------------------------------

def test_predict_answers_unknown_for_an_image_unlike_the_training_images(start, workdir: Path) -> None:
    from foreign_images import write_noise_png

    write_noise_png(workdir)
    worker = start("-d", "dataset", "-c", "blouse", "halter")
    model_id = re.fullmatch(rf"ready: model ({HEX64}) \(trained; labels: blouse, halter\)", worker.ready()).group(1)
    assert worker.ask("predict noise.png") == "unknown"  # seed 000's plain text: the answer alone
    assert worker.ask("predict blouse.jpg") == "blouse"
    worker.send("quit")

    as_json = start("-d", "dataset", "-c", "blouse", "halter", "--json")
    assert json.loads(as_json.ready())["model_id"] == model_id  # the same settings: the same model, loaded
    answer = as_json.ask_json("predict noise.png")
    assert (answer["ok"], answer["label"], answer["unknown"]) == (True, "unknown", True)
    assert answer["best"] in ("blouse", "halter") and set(answer["scores"]) == {"blouse", "halter"}
    known = as_json.ask_json("predict blouse.jpg")
    assert (known["label"], known["best"], known["unknown"]) == ("blouse", "blouse", False)

    off = start("-d", "dataset", "-c", "blouse", "halter", "--json", "--unknown", "off", "--calibration", "off")
    assert json.loads(off.ready())["model_id"] != model_id
    answer = off.ask_json("predict noise.png")
    assert answer["unknown"] is False and answer["label"] == answer["best"] in ("blouse", "halter")


# -- class balance and tuning ------------------------------------------------------------------------

def test_a_tuned_balanced_worker_restarts_on_the_same_model(start, workdir: Path) -> None:
    args = ("-d", "dataset", "-c", "blouse", "halter", "--tune", "--balance", "--max-per-label", "min")
    first = start(*args)
    match = re.fullmatch(rf"ready: model ({HEX64}) \(trained; labels: blouse, halter\)", first.ready())
    assert match
    assert first.finish() == 0
    again = start(*args)  # the planned id of a searched model is the id it is trained under
    assert again.ready() == f"ready: model {match.group(1)} (loaded; labels: blouse, halter)"
    card = json.loads((workdir / "photolabel-worker" / "models" / match.group(1) / "model.json").read_text())
    assert card["config"]["tune"] and card["config"]["balance"] and card["config"]["max_per_label"] == 0
    assert card["tuning"]["heads"][0]["head"] == "logistic"
