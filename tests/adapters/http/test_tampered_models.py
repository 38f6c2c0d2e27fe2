"""A stored model that fails its checks (edited model.json, a listed path outside its folder, a changed file,
a deleted folder) answers 409 with a message that names what is wrong inside the model and never a server
path; it is never a 500, and the service goes on answering."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_api import assert_alive, assert_error, image_files, make_settings, register_model, running


def _edit_model_json(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        doc = json.loads((folder / "model.json").read_text())
        edit(doc)
        (folder / "model.json").write_text(json.dumps(doc))
    return tamper


def _hostname_digest() -> str:
    path = Path("/etc/hostname")
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "0" * 64


def _change_head_file(folder: Path) -> None:
    target = min((folder / "head").iterdir())
    target.write_bytes(target.read_bytes() + b"\0")


#: name: (what is done to the stored model, whether GET /v1/models/{id} notices too, the code)
TAMPERINGS = {
    "dotdot-entry": (_edit_model_json(lambda doc: doc["files"].update({"../../photolabel.sqlite3": "0" * 64})),
                     True, "model_corrupt"),
    "absolute-entry": (_edit_model_json(lambda doc: doc["files"].update({"/etc/hostname": _hostname_digest()})),
                       True, "model_corrupt"),
    "section-entry": (_edit_model_json(lambda doc: doc.update(unknown={"centroids": "../../../etc/hostname"})),
                      True, "model_corrupt"),
    "changed-file": (_change_head_file, False, "model_corrupt"),  # GET reads model.json only, unhashed
    "edited-id": (_edit_model_json(lambda doc: doc.update(labels=list(reversed(doc["labels"])))), False,
                  "model_corrupt"),
    "not-json": (lambda folder: (folder / "model.json").write_text("{not json"), True, "model_corrupt"),
    "deleted": (lambda folder: shutil.rmtree(folder), True, "bad_model"),
}


@pytest.mark.parametrize("name", list(TAMPERINGS))
def test_a_tampered_stored_model_answers_409_without_server_paths(tmp_path: Path, cache_dir: Path,
                                                                  trained_model: Path, small_data: Path,
                                                                  name: str) -> None:
    tamper, noticed_by_get, code = TAMPERINGS[name]
    data_dir = tmp_path / "data"
    model_id = register_model(data_dir, trained_model)
    tamper(data_dir / "models" / f"registered-{model_id[:12]}")
    jpeg = image_files(small_data, "blouse")[0].read_bytes()
    with running(make_settings(tmp_path, cache_dir)) as client:
        answers = [client.post(f"/v1/models/{model_id}/predict", content=jpeg, headers={"Content-Type": "image/jpeg"}),
                   client.post(f"/v1/models/{model_id[:12]}/predict", files={"images": ("a.jpg", jpeg)})]
        details = client.get(f"/v1/models/{model_id}")
        if noticed_by_get:
            answers.append(details)
        else:
            assert details.status_code == 200, details.text
        for answer in answers:
            message = assert_error(answer, 409, code)
            for secret in (str(data_dir), str(data_dir.resolve()), str(tmp_path), _hostname_digest()):
                assert secret not in message, message
        listed = client.get("/v1/models")  # the listing skips what it cannot read; it never fails
        assert listed.status_code == 200 and [m["model_id"] for m in listed.json()["models"]] == [model_id]
        assert_alive(client)


def test_an_intact_model_still_predicts(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                        small_data: Path) -> None:
    data_dir = tmp_path / "data"
    model_id = register_model(data_dir, trained_model)
    jpeg = image_files(small_data, "blouse")[0].read_bytes()
    with running(make_settings(tmp_path, cache_dir)) as client:
        answer = client.post(f"/v1/models/{model_id}/predict", content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert answer.status_code == 200, answer.text
        assert client.get(f"/v1/models/{model_id}").status_code == 200
