"""The ``photolabel`` command line through click's CliRunner: exit codes, stdout, stderr, files."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import re
import shutil
import socket
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from support import serve_http

from photolabel.adapters.cli import main
from photolabel.backbones.efficientnet import VARIANTS as _VARIANTS
from photolabel.config import TRAIN_DEFAULTS as _DEFAULTS

EXAMPLES = Path(__file__).parents[2] / "examples" / "fashion-tiny"
LABELS = ["blouse", "halter", "sweater"]
HEX64 = re.compile(r"^[0-9a-f]{64}$")
ENV_SETTINGS = ("RANDOM_SEED", "TRAIN_PERCENTAGE", "BATCH_SIZE", "EPOCHS", "HTTP_TIMEOUT", "DOWNLOAD_POOL_SIZE")


#: the default backbone's input size (height, width)
SIZE = next((v.image_size, v.image_size) for v in _VARIANTS if v.name == _DEFAULTS.backbone)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    # The commands read these at start-up; a developer's shell must not change the answers.
    for name in ENV_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PHOTOLABEL_CACHE_DIR", str(cache_dir))


def invoke(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click 8.1
    except TypeError:  # click >= 8.2 always keeps stderr apart
        runner = CliRunner()
    return runner.invoke(main, [str(arg) for arg in args], env=env)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def train_json(*args: str | Path, env: dict[str, str] | None = None) -> dict:
    return json.loads(ok(invoke("train", *args, "--json", "-q", env=env)).stdout)


def model_json(model_dir: Path) -> dict:
    return json.loads((model_dir / "model.json").read_text())


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_data(source: Path, dest: Path, labels: list[str] = LABELS, per_label: int = 3) -> Path:
    """``dest/<label>/`` with the first ``per_label`` images of each label in ``source``."""
    for label in labels:
        (dest / label).mkdir(parents=True)
        for image in sorted((source / label).glob("*.jpg"))[:per_label]:
            shutil.copyfile(image, dest / label / image.name)
    return dest


def manifest_lines(data: Path) -> list[str]:
    """``image,label,sha1`` rows (absolute paths) for every image under ``data``."""
    return [
        f"{image},{image.parent.name},{hashlib.sha1(image.read_bytes()).hexdigest()}"
        for image in sorted(data.glob("*/*.jpg"))
    ]


def fresh_jpeg() -> bytes:
    """A decodable JPEG whose bytes (and so sha256) no other test embeds: trailing bytes are ignored."""
    return (EXAMPLES / "blouse" / "1099.jpg").read_bytes() + b"photolabel test_cli"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cache_files(cache_dir: Path) -> set[Path]:
    return {path for path in cache_dir.rglob("*") if path.is_file()}


def assert_one_error(result: Result, *needles: str, exit_code: int = 1) -> str:
    """A handled error (exit 1; 2 for a bad setting): one ``error:`` line on stderr naming ``needles``,
    no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not a crash CliRunner caught
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


# --- train -------------------------------------------------------------------------------------


def test_train_json_summary_and_model_files(tmp_path: Path, small_data: Path, trained_model: Path) -> None:
    out = tmp_path / "model"
    summary = train_json(small_data, "--out", out)
    assert HEX64.match(summary["model_id"])
    assert summary["model_id"] == model_json(trained_model)["model_id"]  # CLI and library agree
    assert summary["labels"] == LABELS
    assert 0.0 <= summary["validation"]["accuracy"] <= 1.0
    assert (summary["n_train"], summary["n_valid"]) == (54, 6)
    for name in ("model.json", "metrics.json", "lineage.json"):
        assert (out / name).is_file()
    assert (out / "head").is_dir() and any((out / "head").iterdir())
    assert model_json(out)["model_id"] == summary["model_id"]


def test_train_text_summary(tmp_path: Path, small_data: Path, trained_model: Path) -> None:
    result = ok(invoke("train", small_data, "-o", tmp_path / "model", "-q"))
    assert model_json(trained_model)["model_id"] in result.stdout
    assert "blouse (20), halter (20), sweater (20)" in result.stdout
    assert "54 train, 6 validation" in result.stdout


def test_train_classes_after_one_flag_fix_the_label_order(tmp_path: Path, small_data: Path) -> None:
    out = tmp_path / "model"
    summary = train_json(small_data, "-o", out, "--classes", "sweater", "blouse", "halter")
    assert summary["labels"] == ["sweater", "blouse", "halter"]
    assert model_json(out)["labels"] == ["sweater", "blouse", "halter"]


def test_train_classes_refuse_other_labels(tmp_path: Path, small_data: Path) -> None:
    out = tmp_path / "model"
    result = invoke("train", small_data, "-o", out, "-q", "--classes", "a", "b")
    line = assert_one_error(result, "blouse/", "'blouse'", "'a', 'b'")
    assert "('a'" not in line  # the classes arrive as names, not as a tuple's repr
    assert not out.exists()


def _tar_gz_with_wrapping_folder(data: Path, dest: Path) -> Path:
    archive = dest / "small.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for image in sorted(data.glob("*/*.jpg")):
            tar.add(image, f"small/{image.relative_to(data).as_posix()}")
    return archive


def _flat_zip(data: Path, dest: Path) -> Path:
    archive = dest / "small.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for image in sorted(data.glob("*/*.jpg")):
            zf.write(image, image.relative_to(data).as_posix())
    return archive


def _csv_with_sha1(data: Path, dest: Path) -> Path:
    manifest = dest / "manifest.csv"
    manifest.write_text("\n".join(manifest_lines(data)) + "\n")
    return manifest


@pytest.mark.parametrize("make_source", [_tar_gz_with_wrapping_folder, _flat_zip, _csv_with_sha1],
                         ids=["tar.gz", "zip", "csv"])
def test_train_from_archive_or_manifest_gives_the_folder_model_id(
    tmp_path: Path, small_data: Path, trained_model: Path, make_source: Callable[[Path, Path], Path]
) -> None:
    source = make_source(small_data, tmp_path)
    summary = train_json(source, "-o", tmp_path / "model")
    assert summary["model_id"] == model_json(trained_model)["model_id"]


def test_random_seed_env_changes_model_id_and_seed_option_wins(
    tmp_path: Path, small_data: Path, trained_model: Path
) -> None:
    default_id = model_json(trained_model)["model_id"]
    from_env = train_json(small_data, "-o", tmp_path / "a", env={"RANDOM_SEED": "7"})
    assert from_env["model_id"] != default_id
    assert model_json(tmp_path / "a")["config"]["seed"] == 7
    overridden = train_json(small_data, "-o", tmp_path / "b", "--seed", "1234", env={"RANDOM_SEED": "7"})
    assert overridden["model_id"] == default_id


def test_train_percentage_env_sets_the_validation_share(tmp_path: Path, small_data: Path) -> None:
    summary = train_json(small_data, "-o", tmp_path / "model", env={"TRAIN_PERCENTAGE": "0.8"})
    assert (summary["n_train"], summary["n_valid"]) == (48, 12)


@pytest.mark.parametrize("value", ["abc", "1.5", "0"])
def test_bad_train_percentage_is_named(tmp_path: Path, small_data: Path, value: str) -> None:
    out = tmp_path / "model"
    result = invoke("train", small_data, "-o", out, "-q", env={"TRAIN_PERCENTAGE": value})
    assert_one_error(result, f"TRAIN_PERCENTAGE='{value}'", exit_code=2)
    assert not out.exists()


def test_mlp_with_tensorboard_takes_epochs_from_the_environment(tmp_path: Path, small_data: Path) -> None:
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install -e '.[test]'")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason="tensorboard is not installed: pip install -e '.[test]'")
    board = tmp_path / "board"
    summary = train_json(small_data, "-o", tmp_path / "m", "--head", "mlp", "--tensorboard", board,
                         env={"EPOCHS": "4", "BATCH_SIZE": "8"})
    assert summary["head"] == "mlp" and summary["head_params"]["epochs"] == 4
    assert summary["head_params"]["batch_size"] == 32  # BATCH_SIZE is the backbone's batch on the command line
    assert model_json(tmp_path / "m")["config"]["head_params"]["epochs"] == 4
    epochs_run = len(np.load(tmp_path / "m" / "head" / "history.npy"))
    events = accumulator.EventAccumulator(str(board), size_guidance={"scalars": 0})
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss/train", "accuracy/train", "loss/early_stopping",
                                             "accuracy/early_stopping"}
    assert [p.step for p in events.Scalars("loss/train")] == list(range(1, epochs_run + 1))
    # the same model without the curves
    again = train_json(small_data, "-o", tmp_path / "again", "--head", "mlp", "--head-param", "epochs=4")
    assert again["model_id"] == summary["model_id"]


def test_epochs_option_wins_and_other_heads_ignore_epochs(tmp_path: Path, small_data: Path,
                                                          trained_model: Path) -> None:
    chosen = train_json(small_data, "-o", tmp_path / "m", "--head", "mlp", "--head-param", "epochs=2",
                        env={"EPOCHS": "4"})
    assert chosen["head_params"]["epochs"] == 2
    logistic = train_json(small_data, "-o", tmp_path / "l", env={"EPOCHS": "4"})
    assert logistic["model_id"] == model_json(trained_model)["model_id"]


def test_bad_epochs_is_named(tmp_path: Path, small_data: Path) -> None:
    result = invoke("train", small_data, "-o", tmp_path / "m", "-q", "--head", "mlp", env={"EPOCHS": "0"})
    assert_one_error(result, "EPOCHS='0'", "int in [1, 100000]", exit_code=2)
    assert not (tmp_path / "m").exists()


# --- predict -----------------------------------------------------------------------------------


def predictions(result: Result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_predict_text_one_tab_separated_line_per_image(trained_model: Path, small_data: Path) -> None:
    images = [small_data / "blouse" / "1000.jpg", small_data / "halter" / "1000.jpg"]
    result = ok(invoke("predict", trained_model, *images, "-q"))
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    as_json = predictions(ok(invoke("predict", trained_model, *images, "--json", "-q")))
    for line, image, expected, record in zip(lines, images, ["blouse", "halter"], as_json):
        name, label, probability = line.split("\t")
        assert (name, label) == (str(image), expected)
        assert probability == f"{record['scores'][label]:.4f}"


def test_predict_json_lines(trained_model: Path, small_data: Path) -> None:
    images = [small_data / label / "1001.jpg" for label in LABELS]
    records = predictions(ok(invoke("predict", trained_model, *images, "--json", "-q")))
    assert [r["image"] for r in records] == [str(image) for image in images]
    model_id = model_json(trained_model)["model_id"]
    for record, image in zip(records, images):
        assert set(record) == {"image", "sha256", "label", "best", "unknown", "scores", "model_id"}
        assert record["sha256"] == sha256_of(image)
        assert record["model_id"] == model_id
        assert list(record["scores"]) == LABELS
        assert sum(record["scores"].values()) == pytest.approx(1.0, abs=1e-6)
        assert record["best"] == max(record["scores"], key=record["scores"].get)
        assert record["label"] == ("unknown" if record["unknown"] else record["best"])


def test_predict_top_k(trained_model: Path, small_data: Path) -> None:
    image = small_data / "sweater" / "1002.jpg"
    (record,) = predictions(ok(invoke("predict", trained_model, image, "--json", "--top-k", "2", "-q")))
    (full,) = predictions(ok(invoke("predict", trained_model, image, "--json", "-q")))
    ranked = sorted(full["scores"], key=full["scores"].get, reverse=True)
    assert list(record["scores"]) == ranked[:2]
    text = ok(invoke("predict", trained_model, image, "-k", "2", "-q")).stdout.strip()
    name, shown = text.split("\t")
    assert name == str(image)
    assert [word for word in shown.split() if word in LABELS] == ranked[:2]


def test_predict_expands_folder_and_glob_to_sorted_files(
    tmp_path: Path, trained_model: Path, small_data: Path
) -> None:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for name, source in [("b.jpg", "halter/1003.jpg"), ("a.jpg", "blouse/1003.jpg"),
                         ("nested/c.jpg", "sweater/1003.jpg")]:
        shutil.copyfile(small_data / source, folder / name)
    (folder / "notes.txt").write_text("not an image")
    pattern = str(small_data / "sweater" / "100[210].jpg")
    records = predictions(ok(invoke("predict", trained_model, folder, pattern, "--json", "-q")))
    expected = [folder / "a.jpg", folder / "b.jpg", folder / "nested" / "c.jpg"]
    expected += [small_data / "sweater" / f"100{i}.jpg" for i in range(3)]
    assert [r["image"] for r in records] == [str(path) for path in expected]


def test_predict_file_url(trained_model: Path, small_data: Path) -> None:
    image = small_data / "halter" / "1004.jpg"
    url = image.as_uri()
    (record,) = predictions(ok(invoke("predict", trained_model, url, "--json", "-q")))
    assert record["image"] == url
    assert record["sha256"] == sha256_of(image)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep the test output quiet
        pass


@pytest.fixture(scope="module")
def http_root(small_data: Path) -> Iterator[str]:
    """``http://127.0.0.1:PORT``, serving ``small_data``."""
    handler = functools.partial(_QuietHandler, directory=str(small_data))
    with serve_http(handler) as base:
        yield base


def test_predict_http_url(trained_model: Path, small_data: Path, http_root: str) -> None:
    image = small_data / "sweater" / "1005.jpg"
    url = f"{http_root}/sweater/1005.jpg"
    (remote,) = predictions(ok(invoke("predict", trained_model, url, "--json", "-q")))
    (local,) = predictions(ok(invoke("predict", trained_model, image, "--json", "-q")))
    assert remote["image"] == url
    assert remote["sha256"] == sha256_of(image)
    assert remote["scores"] == local["scores"]


def test_predict_reports_a_missing_file_and_labels_the_rest(trained_model: Path, small_data: Path,
                                                            tmp_path: Path) -> None:
    good = [small_data / "blouse" / "1006.jpg", small_data / "halter" / "1006.jpg"]
    missing = tmp_path / "missing.jpg"
    result = invoke("predict", trained_model, good[0], missing, good[1], "-q")
    assert_one_error(result, str(missing))
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [str(path) for path in good]


def test_predict_reports_an_undecodable_file_and_labels_the_rest(trained_model: Path, small_data: Path,
                                                                 tmp_path: Path) -> None:
    good = small_data / "sweater" / "1006.jpg"
    bad = tmp_path / "text.jpg"
    bad.write_text("not pixels")
    result = invoke("predict", trained_model, bad, good, "--json", "-q")
    assert_one_error(result, str(bad), "not an image")
    failed, record = predictions(result)
    assert failed["image"] == str(bad) and failed["error"]["code"] == "not_an_image"
    assert record["image"] == str(good)


# --- evaluate, info, export --------------------------------------------------------------------


def test_evaluate_json_and_report(tmp_path: Path, trained_model: Path, small_data: Path) -> None:
    from PIL import Image

    report = tmp_path / "report"
    metrics = json.loads(ok(invoke("evaluate", trained_model, small_data, "--json", "--report", report,
                                   "-q")).stdout)
    assert {"accuracy", "per_class", "confusion_matrix", "labels"} <= set(metrics)
    assert metrics["labels"] == LABELS
    assert set(metrics["per_class"]) == set(LABELS)
    matrix = np.asarray(metrics["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == 60
    assert metrics["accuracy"] == pytest.approx(np.trace(matrix) / 60, abs=1e-6)
    with Image.open(report / "confusion_matrix.png") as png:
        assert png.format == "PNG"
        png.verify()
    html = (report / "report.html").read_text(encoding="utf-8")
    assert all(label in html for label in LABELS)


def test_info_text_and_json(trained_model: Path) -> None:
    model_id = model_json(trained_model)["model_id"]
    text = ok(invoke("info", trained_model)).stdout
    assert model_id in text
    assert "blouse, halter, sweater" in text
    assert _DEFAULTS.backbone in text
    summary = json.loads(ok(invoke("info", trained_model, "--json")).stdout)
    assert summary["model_id"] == model_id
    assert summary["labels"] == LABELS
    assert summary["backbone"]["name"] == _DEFAULTS.backbone


def test_export_onnx_matches_predict(tmp_path: Path, trained_model: Path, small_data: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from photolabel.images import decode_image, resize_rgb

    out = tmp_path / "model.onnx"
    ok(invoke("export", trained_model, out))
    assert out.is_file()
    images = [small_data / label / "1007.jpg" for label in LABELS]
    batch = np.stack([
        resize_rgb(decode_image(image.read_bytes(), draft_size=SIZE), SIZE) for image in images
    ])
    assert batch.dtype == np.uint8 and batch.shape == (3, *SIZE, 3)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (probabilities,) = session.run(["probabilities"], {"image": batch})
    records = predictions(ok(invoke("predict", trained_model, *images, "--json", "-q")))
    expected = np.array([[record["scores"][label] for label in LABELS] for record in records])
    assert np.max(np.abs(probabilities - expected)) <= 1e-4


def test_export_of_a_classic_model_needs_head_only(tmp_path: Path, small_data: Path) -> None:
    data = copy_data(small_data, tmp_path / "data")
    model = tmp_path / "classic"
    ok(invoke("train", data, "-o", model, "--backbone", "classic", "-q"))
    full = tmp_path / "full.onnx"
    assert_one_error(invoke("export", model, full), "classic", "--head-only")
    assert not full.exists()
    head = tmp_path / "head.onnx"
    ok(invoke("export", model, head, "--head-only"))
    assert head.is_file()


# --- bad input ---------------------------------------------------------------------------------


@dataclass
class BadCase:
    data: Path
    needles: tuple[str, ...]
    args: tuple[str, ...] = ()
    bad_bytes: bytes | None = None  # the bad image's bytes: nothing may be cached for them


def _missing_path(tmp: Path, small: Path) -> BadCase:
    return BadCase(tmp / "no-such-data", ("no-such-data", "no such file"))


def _text_file_as_jpeg(tmp: Path, small: Path) -> BadCase:
    data = copy_data(small, tmp / "data")
    (data / "blouse" / "0000.jpg").write_text("these are not pixels\n")
    return BadCase(data, ("blouse/0000.jpg", "not an image"), bad_bytes=b"these are not pixels\n")


def _truncated_jpeg(tmp: Path, small: Path) -> BadCase:
    data = copy_data(small, tmp / "data")
    whole = fresh_jpeg()
    (data / "halter" / "0000.jpg").write_bytes(whole[: len(whole) // 2])
    return BadCase(data, ("halter/0000.jpg", "truncated"), bad_bytes=whole[: len(whole) // 2])


def _csv_wrong_sha1(tmp: Path, small: Path) -> BadCase:
    image = tmp / "fresh.jpg"
    image.write_bytes(fresh_jpeg())
    real = hashlib.sha1(image.read_bytes()).hexdigest()
    wrong = "0" * 40
    lines = manifest_lines(copy_data(small, tmp / "data"))
    lines.insert(2, f"{image},blouse,{wrong}")
    manifest = tmp / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return BadCase(manifest, ("manifest.csv line 3", real, wrong), bad_bytes=image.read_bytes())


def _empty_csv(tmp: Path, small: Path) -> BadCase:
    manifest = tmp / "empty.csv"
    manifest.write_text("")
    return BadCase(manifest, ("empty.csv", "no rows"))


def _empty_label_folder(tmp: Path, small: Path) -> BadCase:
    data = copy_data(small, tmp / "data", labels=["blouse", "sweater"])
    (data / "halter").mkdir()
    return BadCase(data, ("halter", "no images"))


def _single_label(tmp: Path, small: Path) -> BadCase:
    data = copy_data(small, tmp / "data", labels=["blouse"])
    return BadCase(data, ("blouse", "two labels"))


def _label_not_in_classes(tmp: Path, small: Path) -> BadCase:
    manifest = tmp / "manifest.csv"
    lines = manifest_lines(copy_data(small, tmp / "data", per_label=1))  # blouse, halter, sweater
    manifest.write_text("\n".join(lines) + "\n")
    return BadCase(manifest, ("manifest.csv line 3", "'sweater'", "'blouse', 'halter'"),
                   args=("--classes", "blouse", "halter"))


def _tar_with_member(tmp: Path, small: Path, member: tarfile.TarInfo, content: bytes = b"") -> Path:
    archive = tmp / "data.tar.gz"
    data = copy_data(small, tmp / "data")
    with tarfile.open(archive, "w:gz") as tar:
        for image in sorted(data.glob("*/*.jpg")):
            tar.add(image, image.relative_to(data).as_posix())
        tar.addfile(member, fileobj=io.BytesIO(content) if content else None)
    return archive


def _tar_escaping_member(tmp: Path, small: Path) -> BadCase:
    content = fresh_jpeg()
    member = tarfile.TarInfo("../evil.jpg")
    member.size = len(content)
    return BadCase(_tar_with_member(tmp, small, member, content), ("data.tar.gz", "../evil.jpg"),
                   bad_bytes=content)


def _tar_symlink_member(tmp: Path, small: Path) -> BadCase:
    member = tarfile.TarInfo("halter/link.jpg")
    member.type = tarfile.SYMTYPE
    member.linkname = "../blouse/1000.jpg"
    return BadCase(_tar_with_member(tmp, small, member), ("data.tar.gz", "halter/link.jpg", "link"))


def _unreachable_url_in_csv(tmp: Path, small: Path) -> BadCase:
    url = f"http://127.0.0.1:{closed_port()}/blouse/9999.jpg"
    lines = manifest_lines(copy_data(small, tmp / "data"))
    lines.insert(1, f"{url},blouse")
    manifest = tmp / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return BadCase(manifest, ("manifest.csv line 2", url))


BAD_CASES: dict[str, Callable[[Path, Path], BadCase]] = {
    "missing-path": _missing_path,
    "text-file-as-jpeg": _text_file_as_jpeg,
    "truncated-jpeg": _truncated_jpeg,
    "csv-wrong-sha1": _csv_wrong_sha1,
    "empty-csv": _empty_csv,
    "empty-label-folder": _empty_label_folder,
    "single-label": _single_label,
    "label-not-in-classes": _label_not_in_classes,
    "tar-dotdot-member": _tar_escaping_member,
    "tar-symlink-member": _tar_symlink_member,
    "csv-unreachable-url": _unreachable_url_in_csv,
}


@pytest.mark.parametrize("case_name", list(BAD_CASES))
def test_train_refuses_bad_input_and_writes_nothing(
    case_name: str, tmp_path: Path, small_data: Path, cache_dir: Path, trained_model: Path
) -> None:
    # trained_model has filled the cache with every good image used here: any new file is a leak.
    case = BAD_CASES[case_name](tmp_path, small_data)
    escaped = Path(tempfile.gettempdir()) / "evil.jpg"
    escaped_before = escaped.exists()
    before = cache_files(cache_dir)
    out = tmp_path / "model"
    result = invoke("train", case.data, "-o", out, "-q", *case.args)
    assert_one_error(result, *case.needles)
    assert not out.exists()
    assert not list(tmp_path.glob(".model*"))  # no staging folder left beside --out
    assert cache_files(cache_dir) == before
    if case.bad_bytes is not None:
        assert not list(cache_dir.rglob(f"*{hashlib.sha256(case.bad_bytes).hexdigest()}*"))
    assert escaped.exists() == escaped_before


def test_skip_bad_trains_on_the_rest_with_a_warning(tmp_path: Path, small_data: Path) -> None:
    data = copy_data(small_data, tmp_path / "data")
    (data / "blouse" / "0000.jpg").write_text("these are not pixels\n")
    out = tmp_path / "model"
    result = ok(invoke("train", data, "-o", out, "--skip-bad", "--json", "-q"))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "blouse/0000.jpg" in warnings[0]
    assert "error:" not in result.stderr
    summary = json.loads(result.stdout)
    assert [item["image"] for item in summary["skipped"]] == ["blouse/0000.jpg"]
    assert summary["n_train"] + summary["n_valid"] == 9
    assert model_json(out)["model_id"] == summary["model_id"]


def test_train_refuses_an_out_folder_that_is_not_a_model(tmp_path: Path, small_data: Path) -> None:
    out = tmp_path / "notes"
    out.mkdir()
    (out / "todo.txt").write_text("keep me\n")
    result = invoke("train", copy_data(small_data, tmp_path / "data"), "-o", out, "-q")
    assert_one_error(result, str(out), "choose another --out")
    assert [path.name for path in out.iterdir()] == ["todo.txt"]
    assert (out / "todo.txt").read_text() == "keep me\n"


def test_progress_shows_every_stage_on_a_terminal_and_as_lines_on_a_pipe(tmp_path: Path, small_data: Path,
                                                                         cache_dir: Path) -> None:
    import os
    import pty
    import subprocess
    import sys

    command = [sys.executable, "-m", "photolabel.adapters.cli", "train", str(small_data), "--out"]
    def env(name: str) -> dict[str, str]:  # a cold cache each time, so every run has embeddings to compute
        return {**os.environ, "PHOTOLABEL_CACHE_DIR": str(tmp_path / f"cache-{name}")}

    leader, follower = pty.openpty()
    try:
        shown = subprocess.Popen([*command, str(tmp_path / "a")], stderr=follower, stdout=subprocess.PIPE,
                                 env=env("a"))
        os.close(follower)
        screen = b""
        while True:  # read as it is written, so a full terminal buffer never blocks the command
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
        assert shown.wait(timeout=300) == 0
    finally:
        os.close(leader)
    for stage in (b"reading the data", b"embedding", b"fitting the head", b"writing the model"):
        assert stage in screen, stage
    piped = subprocess.run([*command, str(tmp_path / "b"), "--quiet"], capture_output=True, env=env("b"),
                           timeout=300)
    assert piped.returncode == 0 and piped.stderr == b""
    pipe = subprocess.run([*command, str(tmp_path / "c")], capture_output=True, env=env("c"), timeout=300, text=True)
    assert pipe.returncode == 0
    lines = pipe.stderr.splitlines()
    assert lines[:2] == ["reading the data", "hashed 60 image(s)"]
    assert lines[-3:] == ["embedding 60/60", "fitting the head", "writing the model"]
    assert all("\x1b" not in line and "\r" not in line for line in lines)  # plain lines, for logs


# --- settings: one checked configuration ----------------------------------------------------------

@pytest.mark.parametrize(("args", "needles"), [
    (("--head", "rf", "--seed", "-1"), ("--seed", "0..4294967295")),
    (("--valid-fraction", "1.5"), ("--valid-fraction", "[0, 1)")),
    (("--head-param", "C=0"), ("--head-param", "C=0", "float in (0, inf)")),
    (("--head-param", "C=lots"), ("--head-param", "C=lots: expected float")),
    (("--head", "svm", "--head-param", "bogus=1"), ("--head-param", "no parameter 'bogus'", "C, kernel, gamma")),
    (("--head-param", "C"), ("--head-param", "NAME=VALUE")),
    (("--head", "xgboost"), ("--head", "unknown head 'xgboost'", "known heads: cart")),
    (("--backbone", "resnet"), ("--backbone", "unknown backbone 'resnet'")),
    (("--augment", "17"), ("--augment", "0..16")),
    (("--max-per-label", "lots"), ("--max-per-label", "'min'", "'lots'")),
    (("--head", "knn", "--balance"), ("--balance", "head knn cannot weight classes")),
    (("--batch-size", "0"), ("--batch-size",)),
    (("--preset", "fastest"), ("--preset",)),
])
def test_every_bad_setting_is_one_error_line_with_exit_2(tmp_path: Path, small_data: Path, args: tuple[str, ...],
                                                         needles: tuple[str, ...]) -> None:
    out = tmp_path / "model"
    result = invoke("train", small_data, "-o", out, "-q", *args)
    if args[0] in ("--batch-size", "--preset"):  # click's own range or choice check: a usage error, also exit 2
        assert result.exit_code == 2 and args[0] in result.stderr and "Traceback" not in result.output
    else:
        assert_one_error(result, *needles, exit_code=2)
    assert not out.exists()


def test_head_params_are_trained_and_recorded(tmp_path: Path, small_data: Path, trained_model: Path) -> None:
    summary = train_json(small_data, "-o", tmp_path / "m", "--head", "knn", "--head-param", "n_neighbors=3")
    assert summary["head_params"] == {"n_neighbors": 3}
    card = model_json(tmp_path / "m")
    assert card["head"]["params"] == {"n_neighbors": 3} and card["head"]["version"] == 1
    assert card["config"]["head_params"] == card["head"]["params"]
    default = train_json(small_data, "-o", tmp_path / "d", "--head", "knn")
    assert default["model_id"] != summary["model_id"]
    assert "n_neighbors=3" in ok(invoke("info", tmp_path / "m")).stdout


def test_heads_lists_parameters_with_defaults_and_ranges() -> None:
    text = ok(invoke("heads")).stdout
    assert "logistic" in text and "C=1.0" in text and "float in (0, inf)" in text
    listing = json.loads(ok(invoke("heads", "--json")).stdout)
    assert listing["rf"]["params"]["n_estimators"] == {
        "default": 100, "accepts": "int in [1, 10000]", "help": "trees"}
    assert listing["svm"]["params"]["kernel"]["accepts"] == "one of rbf, linear, poly, sigmoid"
    assert set(listing) == {"logistic", "rf", "lda", "knn", "cart", "svm", "nb", "mlp"}


# --- --augment ------------------------------------------------------------------------------------


def test_augment_trains_on_cached_views_and_enters_the_model_id(tmp_path: Path, trained_model: Path) -> None:
    data = copy_data(EXAMPLES, tmp_path / "data", per_label=4)  # 12 images: 3 train + 1 validation per label
    first = train_json(data, "-o", tmp_path / "a", "--augment", "2", "--valid-fraction", "0.25")
    again = train_json(data, "-o", tmp_path / "b", "--augment", "2", "--valid-fraction", "0.25")
    assert (first["n_train"], first["n_valid"]) == (9, 3)
    assert again["embeddings"] == {"computed": 0, "cached": 12 + 2 * 9}  # views of training images only
    assert again["model_id"] == first["model_id"] == model_json(tmp_path / "a")["model_id"]
    assert sha256_of(tmp_path / "a" / "model.json") == sha256_of(tmp_path / "b" / "model.json")
    card = model_json(tmp_path / "a")
    assert card["config"]["augment"] == 2 and card["augment"]["views"] == 2
    one_view = train_json(data, "-o", tmp_path / "c", "--augment", "1", "--valid-fraction", "0.25")
    plain = train_json(data, "-o", tmp_path / "d", "--valid-fraction", "0.25")
    assert len({first["model_id"], one_view["model_id"], plain["model_id"]}) == 3



# --- calibration and the answer "unknown" ---------------------------------------------------------


def test_predict_answers_unknown_for_a_foreign_image_and_keeps_the_scores(trained_model: Path, small_data: Path,
                                                                         tmp_path: Path) -> None:
    from foreign_images import write_noise_png

    noise = write_noise_png(tmp_path)
    photo = small_data / "blouse" / "1000.jpg"
    foreign, own = predictions(ok(invoke("predict", trained_model, noise, photo, "--json", "-q")))
    assert (foreign["label"], foreign["unknown"]) == ("unknown", True) and foreign["best"] in LABELS
    assert set(foreign["scores"]) == set(LABELS) and sum(foreign["scores"].values()) == pytest.approx(1.0)
    assert own["unknown"] is False and own["label"] == own["best"] in LABELS
    lines = ok(invoke("predict", trained_model, noise, photo, "-q")).stdout.splitlines()
    name, label, guess = lines[0].split("\t")
    assert (name, label) == (str(noise), "unknown")
    assert guess == f"({foreign['best']} {foreign['scores'][foreign['best']]:.4f})"
    assert lines[1].split("\t")[1] == own["label"]
    top = ok(invoke("predict", trained_model, noise, "-k", "2", "-q")).stdout.split("\t")
    assert top[:2] == [str(noise), "unknown"] and top[2].startswith(foreign["best"])


def test_train_reports_calibration_and_unknown_and_both_can_be_switched_off(tmp_path: Path, small_data: Path,
                                                                            trained_model: Path) -> None:
    text = ok(invoke("train", small_data, "-o", tmp_path / "on", "-q")).stdout
    assert "calibration  temperature " in text and "validation log-loss" in text and "(ECE)" in text
    assert "unknown      answered for an image farther than" in text
    assert "answered unknown for" in text  # the validation images' rate, with the validation metrics
    summary = train_json(small_data, "-o", tmp_path / "on-json")
    assert summary["calibration"]["temperature"] == model_json(trained_model)["calibration"]["temperature"]
    assert summary["unknown"] == {key: model_json(trained_model)["unknown"][key]
                                  for key in ("distance_threshold", "confidence_threshold")}
    off = train_json(small_data, "-o", tmp_path / "off", "--calibration", "off", "--unknown", "off")
    card = model_json(tmp_path / "off")
    assert "calibration" not in card and "unknown" not in card and off["model_id"] != summary["model_id"]
    assert (card["config"]["calibrate"], card["config"]["unknown"]) == (False, False)
    assert off["calibration"] is None and off["unknown"] is None
    info = ok(invoke("info", tmp_path / "on")).stdout
    assert "calibration  temperature" in info and "unknown      answered" in info
    assert "calibration" not in ok(invoke("info", tmp_path / "off")).stdout
    result = invoke("train", small_data, "-o", tmp_path / "bad", "-q", "--unknown", "maybe")
    assert result.exit_code == 2 and "--unknown" in result.stderr and not (tmp_path / "bad").exists()


def test_evaluate_reports_the_unknown_rate(trained_model: Path, small_data: Path, tmp_path: Path) -> None:
    from foreign_images import generated_images, png_bytes

    data = copy_data(small_data, tmp_path / "data", per_label=2)
    drawn = generated_images()
    for label, name in zip(LABELS, ("noise", "colour-gradient", "shapes-0")):  # nothing the model can know
        (data / label / f"{name}.png").write_bytes(png_bytes(drawn[name]))
    metrics = json.loads(ok(invoke("evaluate", trained_model, data, "--json", "-q")).stdout)
    assert metrics["unknown"]["n"] == 9 and metrics["unknown"]["count"] >= 3 and metrics["unknown"]["far"] >= 3
    text = ok(invoke("evaluate", trained_model, data, "-q")).stdout
    assert f"answered unknown for {metrics['unknown']['count']} of 9 images" in text


def test_export_names_the_unknown_output(tmp_path: Path, trained_model: Path) -> None:
    text = ok(invoke("export", trained_model, tmp_path / "m.onnx")).stdout
    assert "output 'unknown' [N]" in text


# --- class balance and the cross-validated search ----------------------------------------------------

def test_train_max_per_label_and_balance(tmp_path: Path, small_data: Path) -> None:
    data = tmp_path / "data"
    for label, count in zip(LABELS, (12, 5, 9)):
        copy_data(small_data, data, labels=[label], per_label=count)
    smallest = train_json(data, "-o", tmp_path / "min", "--max-per-label", "min", "--balance")
    assert smallest["n_train"] == 3 * 4  # halter: 5 images, 1 held out for validation
    card = model_json(tmp_path / "min")
    assert (card["config"]["max_per_label"], card["config"]["balance"]) == (0, True)
    assert train_json(data, "-o", tmp_path / "zero", "--max-per-label", "0", "--balance")["model_id"] == \
        smallest["model_id"]
    text = ok(invoke("train", data, "-o", tmp_path / "three", "-q", "--max-per-label", "3")).stdout
    assert "images    9 train" in text and "unused    " in text
    everything = train_json(data, "-o", tmp_path / "all")
    assert everything["n_train"] == 26 - everything["n_valid"] and everything["model_id"] != smallest["model_id"]


def test_train_tune_records_the_search(tmp_path: Path, small_data: Path) -> None:
    text = ok(invoke("train", small_data, "-o", tmp_path / "m", "-q", "--tune")).stdout
    assert "tuning    chosen from 9 candidates by 5-fold cross-validation" in text
    card = model_json(tmp_path / "m")
    assert card["config"]["tune"] is True and card["config"]["head_params"] == {"C": 1.0, "max_iter": 2000}
    table = json.loads((tmp_path / "m" / "metrics.json").read_text())["tuning"]
    assert card["head"]["params"] == table["chosen"]["params"] and card["tuning"]["heads"][0]["head"] == "logistic"
    assert "tuning" in json.loads(ok(invoke("info", tmp_path / "m", "--json")).stdout)["metrics"]
    assert "--tune tries C in 0.001, 0.003" in ok(invoke("heads")).stdout
    assert json.loads(ok(invoke("heads", "--json")).stdout)["svm"]["tune_grid"]["gamma"][0] == "scale"


def test_train_preset_best_chooses_a_head(tmp_path: Path, small_data: Path) -> None:
    summary = train_json(small_data, "-o", tmp_path / "m", "--preset", "best", "--backbone", "classic",
                         "--max-per-label", "8")
    listing = json.loads(ok(invoke("heads", "--json")).stdout)
    assert summary["head"] in listing and summary["n_train"] == 24
    card = model_json(tmp_path / "m")
    assert card["config"]["preset"] == "best" and card["config"]["head"] == "logistic"
    searched = [entry["head"] for entry in card["tuning"]["heads"]]
    assert searched[0] == "logistic" and set(searched) == set(listing)  # the configured head first
    assert card["head"]["name"] == summary["head"]
