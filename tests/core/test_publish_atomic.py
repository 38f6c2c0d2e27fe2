"""Publishing a model directory is atomic: a writer killed at any instant leaves OUT holding the old model or
the new one (never nothing, never half), and what it left behind is cleaned up by the next write or read.

Writers are real processes (forked from the test), killed with SIGKILL either at a chosen step of the
publish or at random instants of a loop of publishes. Both ways of publishing are checked: the one-step
swap (renameat2 RENAME_EXCHANGE, Linux) and the two renames used where that swap does not exist.
"""

from __future__ import annotations

import os
import random
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from photolabel import artifact, fsutil
from photolabel.artifact import BackboneCard, HeadCard, ModelCard, compute_model_id, read_model_dir, write_model_dir
from photolabel.config import TrainConfig
from photolabel.errors import InsufficientStorageError

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="writers are forked processes")

HEAD_PARAMS = {"C": 0.5, "max_iter": 100}
WAIT_S = 60  # only to detect a hang


def make_card(seed: int) -> ModelCard:
    """A consistent card (its id is the hash of what it describes); each seed gives another model id."""
    config = TrainConfig(head_params=HEAD_PARAMS, seed=seed, classes=("cat", "dog"))
    return ModelCard(
        model_id=compute_model_id("c" * 64, config, 1, "b" * 64),
        labels=("cat", "dog"),
        backbone=BackboneCard("efficientnet-lite0", "b" * 64, 1280,
                              {"image_size": [224, 224], "resample": "bilinear", "layout": "NHWC-uint8"}),
        head=HeadCard("logistic", dict(HEAD_PARAMS), seed=seed, version=1),
        config=config,
        manifest_sha256="c" * 64,
        photolabel_version="0.1.0",
    )


def publish(out: Path, seed: int, head_bytes: int = 4096) -> None:
    def write_head(folder: Path) -> list[str]:
        folder.mkdir()
        (folder / "weights.bin").write_bytes(bytes([seed % 256]) * head_bytes)
        return ["weights.bin"]

    write_model_dir(out, card=make_card(seed), metrics={"accuracy": 0.9}, lineage={"manifest_sha256": "c" * 64},
                    write_head=write_head)


OLD, NEW = 1, 2
OLD_ID, NEW_ID = make_card(OLD).model_id, make_card(NEW).model_id


def model_id_at(out: Path) -> str:
    """The id of the model at ``out``, every file's hash checked."""
    return read_model_dir(out).card.model_id


def leftovers(parent: Path) -> list[str]:
    return sorted(entry.name for entry in parent.iterdir() if entry.name != "M")


def _fork(work: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # the writer: never returns into pytest
        code = 0
        try:
            work()
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _without_exchange() -> None:
    """In a writer: publish as systems without renameat2 do (two renames)."""
    fsutil.exchange_paths = lambda first, second: False  # type: ignore[assignment]


# --- killed at each step --------------------------------------------------------------------------

#: (how the writer publishes, the step it is killed after, the model OUT must then hold)
STEPS = [
    ("exchange", "staged", OLD_ID),
    ("exchange", "exchanged", NEW_ID),
    ("exchange", "cleanup", NEW_ID),
    ("renames", "staged", OLD_ID),
    ("renames", "rename-1", OLD_ID),  # OUT renamed aside, the new one not yet in: the old one comes back
    ("renames", "rename-2", NEW_ID),
    ("renames", "cleanup", NEW_ID),
]


@pytest.mark.parametrize(("mode", "step", "expected"), STEPS, ids=[f"{m}-{s}" for m, s, _ in STEPS])
def test_writer_killed_at_each_step_leaves_the_old_or_the_new_model(tmp_path: Path, mode: str, step: str,
                                                                    expected: str) -> None:
    if mode == "exchange" and not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    out = tmp_path / "M"
    publish(out, OLD)
    read_end, write_end = os.pipe()

    def writer() -> None:
        os.close(read_end)

        def pause(point: str) -> None:
            if point == step:
                os.write(write_end, point.encode())
                time.sleep(WAIT_S * 10)

        real_fsync_tree, real_exchange, real_rename, real_rmtree = (
            artifact._fsync_tree, fsutil.exchange_paths, os.rename, shutil.rmtree)
        renames = 0

        def fsync_tree(folder: Path) -> None:
            real_fsync_tree(folder)
            pause("staged")

        def exchange(first: object, second: object) -> bool:
            if mode == "renames":
                return False
            done = real_exchange(first, second)  # type: ignore[arg-type]
            pause("exchanged")
            return done

        def rename(source: object, target: object) -> None:
            nonlocal renames
            real_rename(source, target)  # type: ignore[arg-type]
            renames += 1
            pause(f"rename-{renames}")

        def rmtree(path: object, *args: object, **kwargs: object) -> None:
            pause("cleanup")
            real_rmtree(path, *args, **kwargs)  # type: ignore[arg-type]

        artifact._fsync_tree = fsync_tree  # type: ignore[assignment]
        fsutil.exchange_paths = exchange  # type: ignore[assignment]
        os.rename = rename  # type: ignore[assignment]
        shutil.rmtree = rmtree  # type: ignore[assignment]
        publish(out, NEW)
        os.write(write_end, b"finished")

    pid = _fork(writer)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WAIT_S)
        assert ready, f"the writer never reached the step {step!r}"
        assert os.read(read_end, 100).decode() == step
    finally:
        _kill(pid)
        os.close(read_end)

    assert model_id_at(out) == expected  # a reader finds a whole model, restoring the old one if it was left aside
    publish(out, 3)  # the next write sweeps what the killed writer left
    assert model_id_at(out) == make_card(3).model_id
    assert leftovers(tmp_path) == []


# --- killed at random instants --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_writers_killed_at_random_instants_never_leave_a_broken_model(tmp_path: Path, mode: str) -> None:
    if mode == "exchange" and not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    out = tmp_path / "M"
    publish(out, OLD)
    started = time.monotonic()
    publish(out, NEW)
    one_publish = max(time.monotonic() - started, 0.001)
    rng = random.Random(1234)

    def writer() -> None:
        if mode == "renames":
            _without_exchange()
        seed = OLD
        while True:
            seed = NEW if seed == OLD else OLD
            publish(out, seed)

    for _ in range(40):
        pid = _fork(writer)
        time.sleep(rng.uniform(0, 6 * one_publish))
        _kill(pid)
        assert model_id_at(out) in (OLD_ID, NEW_ID)
    publish(out, 3)
    assert leftovers(tmp_path) == []


def _exchange_works(folder: Path) -> bool:
    (folder / "probe-a").mkdir()
    (folder / "probe-b").mkdir()
    try:
        return fsutil.exchange_paths(folder / "probe-a", folder / "probe-b")
    finally:
        (folder / "probe-a").rmdir()
        (folder / "probe-b").rmdir()


# --- leftovers ------------------------------------------------------------------------------------

def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _tag(pid: int) -> str:
    """What a process ``pid`` of this host puts in the names of its temporary entries."""
    return f"{fsutil.process_tag().rsplit('-', 1)[0]}-{pid}"


def test_model_left_aside_by_a_dead_writer_is_restored_when_read(tmp_path: Path) -> None:
    out = tmp_path / "M"
    publish(out, OLD)
    aside = tmp_path / f".M.old-{_tag(_dead_pid())}-0a1b2c3d"
    os.rename(out, aside)
    assert model_id_at(out) == OLD_ID
    assert leftovers(tmp_path) == []


def test_next_write_sweeps_dead_writers_leftovers_and_spares_live_ones(tmp_path: Path) -> None:
    out = tmp_path / "M"
    publish(out, OLD)
    dead, live = _tag(_dead_pid()), _tag(os.getpid())
    for name in (f".M.tmp-{dead}-000000aa", f".other.tmp-{dead}-000000bb", f".M.old-{dead}-000000cc"):
        (tmp_path / name / "head").mkdir(parents=True)
        (tmp_path / name / "head" / "weights.bin").write_bytes(b"x")
    kept = [f".M.tmp-{live}-000000dd",  # a publish in progress in a process that runs
            f".M.tmp-otherhost-{_dead_pid()}-000000ee",  # another machine's: its processes cannot be seen
            ".M.tmp-notapid",  # not ours to judge
            "user-file.txt"]
    for name in kept[:-1]:
        (tmp_path / name).mkdir()
    (tmp_path / "user-file.txt").write_text("kept")
    publish(out, NEW)
    assert model_id_at(out) == NEW_ID
    assert leftovers(tmp_path) == sorted(kept)


# --- disk full ------------------------------------------------------------------------------------

def test_disk_full_while_publishing_keeps_the_old_model(tmp_path: Path) -> None:
    """A real "file too large" (RLIMIT_FSIZE, with SIGXFSZ ignored as Python does) in a writer whose head
    file does not fit: the write fails with InsufficientStorageError and OUT keeps the old model."""
    out = tmp_path / "M"
    publish(out, OLD)
    read_end, write_end = os.pipe()

    def writer() -> None:
        os.close(read_end)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.RLIM_INFINITY))
        try:
            publish(out, NEW, head_bytes=64 * 1024)
        except InsufficientStorageError as exc:
            os.write(write_end, f"{exc.code}|{exc}".encode())
        else:
            os.write(write_end, b"written")

    pid = _fork(writer)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], WAIT_S)
        assert ready, "the writer never finished"
        answer = os.read(read_end, 4096).decode()
    finally:
        os.waitpid(pid, 0)
        os.close(read_end)
    code, _, message = answer.partition("|")
    assert code == "insufficient_storage", answer
    assert "left as it was" in message
    assert model_id_at(out) == OLD_ID
    assert leftovers(tmp_path) == []


def test_storage_full_errors_are_recognised_through_wrapping() -> None:
    import errno

    for number in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        try:
            try:
                raise OSError(number, os.strerror(number))
            except OSError as inner:
                raise RuntimeError("wrapped") from inner
        except RuntimeError as outer:
            assert fsutil.is_storage_full(outer)
    assert not fsutil.is_storage_full(OSError(errno.EACCES, "denied"))
    assert not fsutil.is_storage_full(None)


# --- photolabel train stopped with SIGTERM ----------------------------------------------------------

def test_train_stopped_with_sigterm_removes_its_temporary_folders_and_keeps_out(tmp_path: Path, cache_dir: Path,
                                                                               small_data: Path) -> None:
    import tarfile

    archive = tmp_path / "data.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(small_data, arcname="data")
    temp = tmp_path / "tmp"
    temp.mkdir()
    from photolabel.backbones import get_backbone

    get_backbone("efficientnet-lite0", cache_dir=cache_dir).onnx_path()  # exported once per session
    cold = tmp_path / "cache"  # the exported backbone without embeddings: training takes long enough
    shutil.copytree(cache_dir / "backbones", cold / "backbones")
    out = tmp_path / "M"
    publish(out, OLD)
    env = {**os.environ, "TMPDIR": str(temp)}
    process = subprocess.Popen([sys.executable, "-m", "photolabel.adapters.cli", "train", str(archive), "--out",
                                str(out), "--cache-dir", str(cold), "--threads", "1"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT_S
        while not any(temp.iterdir()):  # the archive is being extracted into a temporary folder
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training never made its temporary folder"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=WAIT_S)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode == 0:
        pytest.skip("training finished before the signal")
    assert process.returncode == 143, stderr
    assert b"Traceback" not in stderr and b"stopped (SIGTERM)" in stderr
    assert list(temp.iterdir()) == []
    assert model_id_at(out) == OLD_ID
    assert leftovers(tmp_path) == sorted(["cache", "data.tar.gz", "tmp"])
