"""Who may change the service (API_TOKEN), where `photolabel serve` may listen without one, and how long
DATA_DIR keeps uploads (UPLOAD_RETENTION_S, KEEP_UPLOADS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from pydantic import ValidationError
from support import wait_until_live
from test_api import (
    assert_error,
    image_files,
    make_settings,
    register_model,
    running,
    tar_gz,
    wait_for_job,
)

from photolabel.adapters.http import jobs
from photolabel.adapters.http.auth import is_loopback_host, needs_token
from photolabel.adapters.http.settings import ServiceSettings
from photolabel.adapters.http.store import Registry

TOKEN = "k7Qe2-very-secret-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def assert_unauthorized(response: httpx.Response, *, invalid: bool = False) -> str:
    message = assert_error(response, 401, "unauthorized")
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert ('error="invalid_token"' in challenge) is invalid
    assert TOKEN not in message and "Traceback" not in message
    return message


# --- the token ----------------------------------------------------------------------------------------


def test_changes_need_the_token_and_reading_stays_open(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                       small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, api_token=TOKEN)
    model_id = register_model(settings.data_dir, trained_model)
    image = image_files(small_data, "sweater")[0].read_bytes()
    with running(settings) as client:
        upload = {"data": ("d.tar.gz", b"not read", "application/gzip")}
        message = assert_unauthorized(client.post("/v1/train", files=upload))
        assert "Authorization: Bearer" in message and "API_TOKEN" in message
        assert_unauthorized(client.post("/v1/train", files=upload, headers={"Authorization": "Bearer wrong"}),
                            invalid=True)
        assert_unauthorized(client.post("/v1/train", files=upload, headers={"Authorization": f"Basic {TOKEN}"}))
        # refused before the body was read: no upload kept, no job made
        assert not (settings.data_dir / "uploads").exists()
        assert client.get("/v1/jobs").json() == {"jobs": []}

        assert_unauthorized(client.post("/train", json={"csv": {"url": "http://x/a.csv", "sha1": "0" * 40}}))
        assert_unauthorized(client.post("/v1/jobs/" + "0" * 40 + "/retry"))
        assert_unauthorized(client.delete(f"/v1/models/{model_id}"))
        assert_unauthorized(client.put(f"/v1/models/{model_id}"))  # any other change, even one with no route
        assert [m["model_id"] for m in client.get("/v1/models").json()["models"]] == [model_id]

        # with the token, the request reaches its route (here: an empty upload, refused by the route)
        assert_error(client.post("/v1/train", files={"data": ("d.tar.gz", b"", "application/gzip")},
                                 headers=BEARER), 422, "bad_upload")
        lower_case = {"Authorization": f"bearer {TOKEN}"}
        # predictions stay open by default
        predicted = client.post(f"/v1/models/{model_id}/predict", content=image,
                                headers={"Content-Type": "image/jpeg"})
        assert predicted.status_code == 200, predicted.text
        # reading stays open: health, the page, the docs, the lists
        for path in ("/livez", "/", "/api/doc", "/api/openapi.json", "/v1/models", f"/v1/models/{model_id}",
                     "/v1/jobs"):
            assert client.get(path).status_code == 200, path
        assert client.get("/readyz").status_code in (200, 503)  # never 401

        schema = client.get("/api/openapi.json").json()
        assert schema["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http", "scheme": "bearer",
            "description": "The token the server was started with (API_TOKEN or API_TOKEN_FILE)."}
        paths = schema["paths"]
        for path, method in (("/v1/train", "post"), ("/train", "post"), ("/v1/models/{key}", "delete"),
                             ("/v1/jobs/{job_id}/retry", "post")):
            assert paths[path][method]["security"] == [{"bearerAuth": []}], (path, method)
            assert "401" in paths[path][method]["responses"]
        for path, method in (("/v1/models/{key}/predict", "post"), ("/infer", "post"), ("/v1/models", "get")):
            assert "security" not in paths[path][method], (path, method)

        deleted = client.delete(f"/v1/models/{model_id}", headers=lower_case)
        assert deleted.status_code == 204, deleted.text


def test_predictions_need_the_token_when_asked(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                               small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, api_token=TOKEN, predict_requires_token=True)
    model_id = register_model(settings.data_dir, trained_model)
    image = image_files(small_data, "sweater")[0].read_bytes()
    with running(settings) as client:
        raw = {"Content-Type": "image/jpeg"}
        assert_unauthorized(client.post(f"/v1/models/{model_id}/predict", content=image, headers=raw))
        assert_unauthorized(client.post(f"/v1/models/{model_id}/predict-object", json={"uri": "s3://b/x.jpg"}))
        assert_unauthorized(client.post("/infer", json={"model": {"sha1": model_id}, "image": {"url": "http://x"}}))
        predicted = client.post(f"/v1/models/{model_id}/predict", content=image, headers={**raw, **BEARER})
        assert predicted.status_code == 200, predicted.text
        assert sorted(predicted.json()["predictions"][0]["scores"]) == ["blouse", "halter", "sweater"]
        assert client.get("/v1/models").status_code == 200
        paths = client.get("/api/openapi.json").json()["paths"]
        assert paths["/v1/models/{key}/predict"]["post"]["security"] == [{"bearerAuth": []}]


def test_without_a_token_everything_stays_open(tmp_path: Path, cache_dir: Path) -> None:
    with running(make_settings(tmp_path, cache_dir)) as client:
        assert_error(client.post("/v1/train", files={"data": ("d.tar.gz", b"", "application/gzip")}),
                     422, "bad_upload")
        assert "securitySchemes" not in client.get("/api/openapi.json").json().get("components", {})


def test_the_token_file_and_bad_tokens(tmp_path: Path, cache_dir: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(f"\n  {TOKEN}  \n")
    settings = make_settings(tmp_path, cache_dir, api_token_file=token_file)
    assert settings.bearer_token() == TOKEN
    with running(settings) as client:
        assert_unauthorized(client.delete("/v1/models/" + "0" * 12))
        assert_error(client.delete("/v1/models/" + "0" * 12, headers=BEARER), 404, "not_found")

    with pytest.raises(ValidationError, match="at least 16 characters"):
        ServiceSettings(api_token="short")
    with pytest.raises(ValidationError, match="cannot read the token file"):
        ServiceSettings(api_token_file=tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        ServiceSettings(api_token_file=empty)
    with pytest.raises(ValidationError, match="API_TOKEN or API_TOKEN_FILE, not both"):
        ServiceSettings(api_token=TOKEN, api_token_file=token_file)
    assert ServiceSettings(api_token="  ").bearer_token() is None  # an empty variable is no token


def test_the_page_asks_for_the_token_and_sends_it(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                  small_data: Path) -> None:
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip(f"browser tests need Chromium at {chromium}, which is missing")
    playwright = pytest.importorskip("playwright.sync_api")
    from support import running_uvicorn

    from photolabel.adapters.http.app import create_app

    settings = make_settings(tmp_path, cache_dir, api_token=TOKEN, predict_requires_token=True)
    model_id = register_model(settings.data_dir, trained_model)
    image = image_files(small_data, "halter")[0]
    args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    expect = playwright.expect
    with running_uvicorn(create_app(settings)) as base, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(chromium), args=args)
        try:
            page = browser.new_context(base_url=base).new_page()
            page.goto("/")
            expect(page.get_by_test_id("model-select").locator(f'option[value="{model_id}"]')).to_have_count(1)
            page.get_by_test_id("predict-file").set_input_files(str(image))
            error = page.get_by_test_id("predict-error")
            expect(error).to_contain_text("needs the API token")  # a sentence, not the code
            expect(error).not_to_contain_text("unauthorized")
            expect(page.get_by_test_id("api-token")).to_be_focused()

            page.get_by_test_id("api-token").fill(TOKEN)
            page.get_by_test_id("predict-file").set_input_files(str(image))
            expect(page.get_by_test_id("predict-label")).to_be_visible()
            expect(error).to_be_hidden()
            assert page.evaluate("sessionStorage.getItem('photolabel.apiToken')") == TOKEN
            page.reload()  # kept for the tab
            expect(page.get_by_test_id("api-token")).to_have_value(TOKEN)
        finally:
            browser.close()


@pytest.mark.parametrize(("method", "path", "predict", "needed"), [
    ("GET", "/v1/models", False, False),
    ("HEAD", "/", False, False),
    ("POST", "/v1/train", False, True),
    ("POST", "/train", False, True),
    ("DELETE", "/v1/models/abc", False, True),
    ("POST", "/v1/models/abc/promote", False, True),  # a change without a rule of its own
    ("PATCH", "/v1/jobs/abc", False, True),
    ("POST", "/infer", False, False),
    ("POST", "/v1/models/abc/predict", False, False),
    ("POST", "/v1/models/abc/predict-object", False, False),
    ("POST", "/v1/models/abc/predict", True, True),
    ("POST", "/infer", True, True),
])
def test_which_requests_need_the_token(method: str, path: str, predict: bool, needed: bool) -> None:
    assert needs_token(method, path, predict_requires_token=predict) is needed


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.7", False), ("192.168.1.2", False),
])
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


# --- serve: no token, no open port -------------------------------------------------------------------------


def _serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if name not in ("API_TOKEN", "API_TOKEN_FILE", "NO_AUTH", "API_HOST")}
    return {**env, "DATA_DIR": str(tmp_path / "data"), **extra}


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "photolabel.adapters.cli", "serve", "--host", "0.0.0.0",
                           "--port", "1"], env=_serve_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: refusing to listen on 0.0.0.0 without a token")
    assert "API_TOKEN" in lines[0] and "--no-auth" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before anything was made


@pytest.mark.parametrize(("args", "env", "warned"), [
    (["--host", "0.0.0.0", "--no-auth"], {}, True),
    (["--host", "0.0.0.0"], {"NO_AUTH": "true"}, True),
    (["--host", "0.0.0.0"], {"API_TOKEN": TOKEN}, False),
    ([], {"API_HOST": "127.0.0.1"}, False),
])
def test_serve_starts_with_a_token_on_loopback_or_when_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            args: list[str], env: dict[str, str],
                                                            warned: bool) -> None:
    from photolabel.adapters import cli
    from photolabel.adapters.http import lifecycle

    started: list[dict] = []
    monkeypatch.setattr(lifecycle, "serve_app", lambda app, **options: started.append(options))
    base = {"API_TOKEN": "", "API_TOKEN_FILE": "", "NO_AUTH": "false", "API_HOST": "127.0.0.1"}
    result = CliRunner().invoke(cli.main, ["serve", "--port", "0", "--data-dir", str(tmp_path / "d"), *args],
                                env={**base, **env})
    assert result.exit_code == 0, result.output
    assert len(started) == 1
    assert ("no token (--no-auth)" in result.output) is warned


def test_a_real_server_on_all_addresses_asks_for_the_token(tmp_path: Path, cache_dir: Path) -> None:
    from support import closed_port

    port = closed_port()
    env = _serve_env(tmp_path, PHOTOLABEL_CACHE_DIR=str(cache_dir), API_TOKEN=TOKEN)
    log = tmp_path / "server.log"
    server = subprocess.Popen([sys.executable, "-m", "photolabel.adapters.cli", "serve", "--host", "0.0.0.0",
                               "--port", str(port)], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(server, base, log)
        assert_unauthorized(httpx.post(f"{base}/v1/train", files={"data": ("d.csv", b"x")}, timeout=10))
        assert_error(httpx.post(f"{base}/v1/train", files={"data": ("d.tar.gz", b"")}, headers=BEARER,
                                timeout=10), 422, "bad_upload")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert TOKEN not in log.read_text()


# --- uploads: removed once no job needs them -------------------------------------------------------------


def test_the_upload_of_a_job_that_succeeded_is_removed(tmp_path: Path, cache_dir: Path, small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    uploads = settings.data_dir / "uploads"
    with running(settings) as client:
        started = client.post("/v1/train", files={"data": ("d.tar.gz", tar_gz(small_data), "application/gzip")})
        assert started.status_code == 202, started.text
        _backdate(uploads)
        job = wait_for_job(client, started.json()["job_id"])
        assert job["status"] == "ready", job
        _wait_until(lambda: not any(uploads.iterdir()), "the upload of a finished job is still there")
        assert client.get(f"/v1/models/{job['model_id']}").status_code == 200  # the model does not need it


def test_a_failed_job_keeps_its_upload_for_a_retry_then_says_it_is_gone(tmp_path: Path, cache_dir: Path) -> None:
    csv = b"http://127.0.0.1:9/a.jpg,cat\nhttp://127.0.0.1:9/b.jpg,dog\n"  # private addresses: the job fails
    upload = {"data": ("rows.csv", csv, "text/csv")}

    settings = make_settings(tmp_path / "kept", cache_dir)  # UPLOAD_RETENTION_S: a day
    with running(settings) as client:
        job_id = _started(client.post("/v1/train", files=upload))
        _backdate(settings.data_dir / "uploads")
        assert wait_for_job(client, job_id)["status"] == "error"
        _wait_until(lambda: client.app.state.service.runner.running() == {}, "the job's process did not end")
        client.app.state.service.runner._sweep_uploads_when_due(1)  # a sweep now, as when a job ends
        assert [p.suffix for p in (settings.data_dir / "uploads").iterdir()] == [".csv"]
        retried = client.post(f"/v1/jobs/{job_id}/retry")
        assert retried.status_code == 200 and retried.json()["status"] in ("queued", "in_progress", "error")
        assert _code(wait_for_job(client, job_id)) != "upload_removed"

    settings = make_settings(tmp_path / "gone", cache_dir, upload_retention_s=0)
    uploads = settings.data_dir / "uploads"
    with running(settings) as client:
        job_id = _started(client.post("/v1/train", files=upload))
        _backdate(settings.data_dir / "uploads")
        failed = wait_for_job(client, job_id)
        assert failed["status"] == "error" and _code(failed) != "upload_removed"
        _wait_until(lambda: not any(uploads.iterdir()), "the upload of a failed job outlived UPLOAD_RETENTION_S=0")
        client.post(f"/v1/jobs/{job_id}/retry")
        job = wait_for_job(client, job_id, statuses=("error",))
        assert _code(job) == "upload_removed", job
        message = job["error"]["message"]
        assert "UPLOAD_RETENTION_S" in message and "POST /v1/train" in message and f"{job_id}/retry" in message
        assert str(settings.data_dir.resolve()) not in message
        # the way out the message gives: the same file again finds the job, and the retry runs it
        # (UPLOAD_GRACE_S keeps a file just written from a sweep until its job is queued)
        again = client.post("/v1/train", files=upload)
        assert again.status_code == 200 and again.json()["job_id"] == job_id
        client.post(f"/v1/jobs/{job_id}/retry")
        assert _code(wait_for_job(client, job_id, statuses=("error",))) != "upload_removed"


def test_keep_uploads_turns_removal_off(tmp_path: Path, cache_dir: Path) -> None:
    with running(make_settings(tmp_path, cache_dir, keep_uploads=True)) as client:
        assert client.app.state.service.runner.upload_retention_s is None
    with running(make_settings(tmp_path / "b", cache_dir, upload_retention_s=30)) as client:
        assert client.app.state.service.runner.upload_retention_s == 30


def test_sweep_uploads_keeps_what_jobs_need(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    uploads = data_dir / "uploads"
    uploads.mkdir(parents=True)
    registry = Registry(data_dir / "photolabel.sqlite3")
    old = time.time() - 3 * 3600

    def upload(name: str, *, age: float | None = old) -> Path:
        path = uploads / name
        path.write_bytes(b"x")
        if age is not None:
            os.utime(path, (age, age))
        return path

    def job(job_id: str, path: Path, status: str) -> None:
        registry.create_job(job_id, "train", {"data": str(path)})
        if status != "queued":
            registry.update_job(job_id, status=status)

    succeeded, failed, queued, shared = upload("a.tar.gz"), upload("b.csv"), upload("c.zip"), upload("d.csv")
    upload("e.csv")  # no job names it
    fresh_orphan = upload("f.csv", age=None)
    partial, fresh_partial = upload(".upload-1.tmp"), upload(".upload-2.tmp", age=None)
    job("1" * 40, succeeded, "ready")
    job("2" * 40, failed, "error")
    job("3" * 40, queued, "queued")
    job("4" * 40, shared, "ready")
    job("5" * 40, shared, "in_progress")
    outside = tmp_path / "elsewhere.csv"
    outside.write_bytes(b"x")
    job("6" * 40, outside, "ready")

    removed = jobs.sweep_uploads(registry, data_dir, retention_s=3600)
    assert sorted(p.name for p in removed) == sorted(["a.tar.gz", "e.csv", ".upload-1.tmp"])
    assert {p.name for p in uploads.iterdir()} == {"b.csv", "c.zip", "d.csv", "f.csv", ".upload-2.tmp"}
    assert outside.exists()
    # once the failed job's retention has passed, its file goes too; what running jobs use stays
    later = jobs.sweep_uploads(registry, data_dir, retention_s=3600, now=time.time() + 2 * 3600)
    assert {p.name for p in later} == {"b.csv", "f.csv", ".upload-2.tmp"}
    assert {p.name for p in uploads.iterdir()} == {"c.zip", "d.csv"}
    assert failed.exists() is False and queued.exists() and shared.exists() and not partial.exists()
    assert not fresh_orphan.exists() and not fresh_partial.exists()
    registry.close()


def _backdate(uploads: Path) -> None:
    """Make the uploads older than UPLOAD_GRACE_S (which spares files written in the last minute)."""
    old = time.time() - 2 * jobs.UPLOAD_GRACE_S
    for path in uploads.iterdir():
        os.utime(path, (old, old))


def _started(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    return response.json()["job_id"]


def _code(job: dict) -> str | None:
    return (job.get("error") or {}).get("code")


def _wait_until(condition, message: str, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
