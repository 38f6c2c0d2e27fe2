"""The FastAPI app of ``photolabel serve``: :func:`create_app` builds it from the settings.

It opens the shared :class:`~.deps.Service` for the app's lifetime, installs the error
handlers and the body-size limit, includes one router per resource (:mod:`.routes`) and
serves the web page. A new resource is a module in ``routes/`` and one ``include_router``
line below.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from swagger_ui_bundle import swagger_ui_path

from photolabel import __version__
from photolabel.adapters.http.auth import BearerAuth, document_bearer_auth
from photolabel.adapters.http.batching import PredictorCache
from photolabel.adapters.http.deps import Service
from photolabel.adapters.http.errors import NotFoundError, install_error_handlers
from photolabel.adapters.http.jobs import JobRunner
from photolabel.adapters.http.lifecycle import Drain, DrainGate
from photolabel.adapters.http.middleware import BodySizeLimit, FetchSlots
from photolabel.adapters.http.routes import health, models, predict, seed, training
from photolabel.adapters.http.settings import ServiceSettings
from photolabel.adapters.http.store import Registry
from photolabel.cache import resolve_cache_dir
from photolabel.model import Model

logger = logging.getLogger("photolabel.http")

STATIC_DIR = Path(__file__).parent / "static"
# Swagger UI's own files (JavaScript, CSS, icon; the package `swagger-ui-bundle-v2`, Apache-2.0): /api/doc
# works offline, with no request to a CDN. Swagger UI 5 or later: it renders OpenAPI 3.1.
SWAGGER_UI_DIR = Path(str(swagger_ui_path))
SWAGGER_UI_URL = "/api/doc/assets"
DB_NAME = "photolabel.sqlite3"

_DESCRIPTION = """
Label images with reproducible classifiers trained on your own labelled images.

* **static-transfer-learning compatible**: `POST /train` with a CSV of image URLs, repeat it until
  `ready`, then `POST /infer`.
* **Native API** under `/v1`: upload an archive or CSV to `/v1/train`, follow `/v1/jobs/{job_id}`,
  list and inspect `/v1/models`, predict with `/v1/models/{key}/predict`.

Every error answers `{"error": {"code", "message"}}`.
"""


def create_app(settings: ServiceSettings | None = None, *, import_models: Path | None = None) -> FastAPI:
    """The service as an ASGI app. ``settings`` default to the environment, read now.

    ``import_models`` (``photolabel serve --models DIR``): a model directory, or a folder of them, registered
    at start; each is checked by its hashes, and one that fails is logged and skipped."""
    settings = settings or ServiceSettings()
    drain = Drain(settings.drain_timeout_s)  # SIGTERM: see lifecycle.serve_app

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        cache_dir = resolve_cache_dir(settings.photolabel_cache_dir)
        registry = Registry(data_dir / DB_NAME)
        if import_models is not None:
            await run_in_threadpool(models.register_models_from, registry, data_dir, import_models)
        runner = JobRunner(registry, data_dir=data_dir, cache_dir=cache_dir, fetch_options=settings.fetch_options(),
                           workers=settings.train_workers, threads=settings.train_threads,
                           tensorboard=settings.tensorboard_logs_enabled,
                           upload_retention_s=None if settings.keep_uploads else settings.upload_retention_s)

        def load(_model_id: str, path: str) -> Model:
            return Model.load(path, threads=settings.threads, cache_dir=cache_dir,
                              max_pixels=settings.max_image_pixels)

        predictors = PredictorCache(settings.model_cache_size, loader=load, max_batch=settings.infer_max_batch,
                                    max_wait_ms=settings.infer_max_wait_ms, max_queue=settings.infer_max_queue,
                                    batch_size=settings.batch_size)
        recovered = runner.start()
        if recovered:
            logger.info("requeued or failed %d job(s) interrupted by the last stop", len(recovered))
        app.state.service = Service(settings, registry, runner, predictors, cache_dir)
        # draining stops the runner at once: a running job is queued again (its child cleans up on SIGTERM)
        drain.on_begin(lambda: runner.stop(10, requeue=True))
        try:
            yield
        finally:
            predictors.close()
            await run_in_threadpool(lambda: runner.stop(10, requeue=True))
            registry.close()

    app = FastAPI(
        title="photolabel", version=__version__, description=_DESCRIPTION, lifespan=lifespan,
        docs_url=None, openapi_url="/api/openapi.json", redoc_url=None,  # /api/doc: below, served offline
    )
    app.state.drain = drain
    install_error_handlers(app)
    # at most FETCH_REQUEST_SLOTS requests that download URLs at once: they never hold every thread
    app.add_middleware(FetchSlots, slots=settings.fetch_request_slots, wait_s=settings.http_timeout)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       per_path={"/v1/train": (settings.max_train_upload_bytes, "MAX_TRAIN_UPLOAD_BYTES"),
                                 "/v1/models": (settings.max_train_upload_bytes, "MAX_TRAIN_UPLOAD_BYTES")})
    app.add_middleware(DrainGate, drain=drain)  # counts requests in flight; no new jobs while draining
    token = settings.bearer_token()
    if token is not None:  # outermost: a request without the token reaches nothing else (see auth.py)
        app.add_middleware(BearerAuth, token=token, predict_requires_token=settings.predict_requires_token)
        document_bearer_auth(app, predict_requires_token=settings.predict_requires_token)
    app.include_router(seed.router)
    app.include_router(training.router)
    app.include_router(models.router)
    app.include_router(predict.router)
    app.include_router(health.router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount(SWAGGER_UI_URL, StaticFiles(directory=SWAGGER_UI_DIR), name="swagger-ui")

    @app.get("/api/doc", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        assets = f"{root}{SWAGGER_UI_URL}"
        return get_swagger_ui_html(
            openapi_url=f"{root}/api/openapi.json", title=f"{app.title} API",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js", swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})  # no badge fetched from swagger.io

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise NotFoundError("the web page is not installed (static/index.html is missing)")
        return FileResponse(page, media_type="text/html")

    return app
