"""Seed 000's demo: drive ``photolabel worker`` as a subprocess through stdin/stdout.

Run from the repository root:  .venv/bin/python examples/demo.py

In a temporary folder it builds seed 000's files from ``examples/fashion-tiny``:

* ``dataset.tar.gz``: 60 blouse and 60 halter images (``<label>/<image>``), the
  starting data set, found by its bare name ``dataset``;
* ``train.tar.gz``: 40 sweater images, a label the first model does not know;
* ``valid.tar.gz``: 10 more sweaters and 5 each of blouse and halter, held out;
* ``test1.jpg``: a sweater in none of them.

It then starts ``photolabel worker -d dataset`` (no ``-c``, so training may add a
label), asks it to predict test1.jpg (the first model can only say blouse or
halter), sends ``train train.tar.gz valid.tar.gz`` (only the new images are embedded;
the labels become blouse, halter, sweater), predicts again, asks for ``info`` and
quits. Each command is printed as ``>>> command`` followed by the worker's answer.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "fashion-tiny"


def images(label: str, start: int, stop: int) -> list[Path]:
    return sorted((EXAMPLES / label).glob("*.jpg"))[start:stop]


def make_archive(path: Path, parts: dict[str, tuple[int, int]]) -> None:
    """``path``: a .tar.gz of ``<label>/<image>`` for images ``start:stop`` of each label."""
    with tarfile.open(path, "w:gz") as archive:
        for label, (start, stop) in parts.items():
            for image in images(label, start, stop):
                archive.add(image, arcname=f"{label}/{image.name}")


class Worker:
    """The worker process: one command line in, one answer line out."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        command = [sys.executable, "-m", "photolabel.adapters.cli", "worker", *args]
        print("$ photolabel worker " + " ".join(args))
        self.proc = subprocess.Popen(command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)  # stderr goes to ours: errors show

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the worker stopped (exit {self.proc.wait()})")
        return line.rstrip("\n")

    def send(self, command: str) -> str | None:
        """Write ``command``; print it and the answer, and return the answer (None after quit)."""
        assert self.proc.stdin is not None
        print(f">>> {command}", flush=True)
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if command == "quit":
            return None
        answer = self.read()
        print(answer, flush=True)
        return answer

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=30)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="photolabel-demo-") as folder:
        here = Path(folder)
        make_archive(here / "dataset.tar.gz", {"blouse": (0, 60), "halter": (0, 60)})
        make_archive(here / "train.tar.gz", {"sweater": (0, 40)})
        make_archive(here / "valid.tar.gz", {"sweater": (40, 50), "blouse": (60, 65), "halter": (60, 65)})
        shutil.copyfile(EXAMPLES / "sweater" / "1099.jpg", here / "test1.jpg")

        worker = Worker(["-d", "dataset"], cwd=here)
        try:
            print(worker.read(), flush=True)  # the ready line: the model was trained (or loaded)
            worker.send("predict test1.jpg")
            worker.send("train train.tar.gz valid.tar.gz")
            worker.send("predict test1.jpg")
            worker.send("info")
            worker.send("quit")
            code = worker.proc.wait(timeout=30)
        finally:
            worker.close()
        print(f"(worker exited with {code})")
        return code


if __name__ == "__main__":
    sys.exit(main())
