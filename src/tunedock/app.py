"""The control plane's ASGI application: routes, error bodies and background work."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import DataError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from tunedock import web
from tunedock.accounts.service import FirstAdmin
from tunedock.api.audit_trail import AuditTrailMiddleware
from tunedock.api.errors import (
    domain_error_response,
    error_body,
    internal_error_response,
    validation_error_response,
)
from tunedock.api.routes import accounts, deployments, models, notifications
from tunedock.errors import DATABASE_UNREACHABLE, UNSTORABLE_VALUE, TunedockError
from tunedock.gateway import routes as inference
from tunedock.gateway.errors import openai_domain_error_response, openai_error_response
from tunedock.gateway.forwarder import Gateway
from tunedock.services import Services, build_services
from tunedock.settings import Settings
from tunedock.store.database import prepare_schema, redacted

logger = logging.getLogger(__name__)

FirstAdminCallback = Callable[[FirstAdmin, Settings], None]


def create_app(settings: Settings, on_first_admin: FirstAdminCallback | None = None,
               on_started: Callable[[Services], object] | None = None) -> FastAPI:
    """Build the application; ``on_started`` runs as a background task once serving starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = await asyncio.to_thread(_open_services, settings, on_first_admin)
        gateway = Gateway(services)
        await gateway.start()
        app.state.services = services
        app.state.gateway = gateway
        services.notifications.start()
        background = [asyncio.create_task(services.deployments.restore(), name="restore")]
        if on_started is not None:
            background.append(asyncio.create_task(_run_after(background[0], on_started, services)))
        logger.info("Tunedock serving at %s with store %s", settings.base_url, redacted(services.database.url))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await services.deployments.shutdown()
            await services.notifications.stop()
            await gateway.close()
            # Store calls of cancelled tasks may still be running in worker threads; let them
            # return their connections before the pool closes.
            await asyncio.get_running_loop().shutdown_default_executor()
            services.database.dispose()
            logger.info("Tunedock stopped")

    app = TunedockApp(title="Tunedock", version="0.1.0", lifespan=lifespan,
                  description="Deploy fine-tuned language models as OpenAI-compatible endpoints.")
    _install_error_handlers(app)
    app.add_middleware(AuditTrailMiddleware)
    app.include_router(models.router)
    app.include_router(deployments.router)
    app.include_router(accounts.router)
    app.include_router(notifications.router)
    app.include_router(inference.router)
    app.include_router(web.router)
    app.mount(web.STATIC_PREFIX, web.static_files(), name="console-static")

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Inference metrics in the Prometheus text format, for a scraper on the same network."""
        registry = request.app.state.services.metrics.registry
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


class TunedockApp(FastAPI):
    """The application, which hands the forwarded inference routes to the gateway first.

    The routes stay in the router for the schema and respond the same way. Each inference
    request skips the middleware stack and the routing, which cost more than the forwarding.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route_name = inference.FORWARDED.get(scope["path"])
            if route_name is not None:
                await self.state.gateway.handle(scope, receive, send, route_name)
                return
        await super().__call__(scope, receive, send)


def _open_services(settings: Settings, on_first_admin: FirstAdminCallback | None) -> Services:
    settings.home_dir.mkdir(parents=True, exist_ok=True)
    prepare_schema(settings.resolved_database_url)
    services = build_services(settings)
    first_admin = services.accounts.ensure_first_admin(
        settings.admin_username, settings.admin_email, settings.admin_password, settings.admin_api_key)
    if first_admin is not None:
        write_client_config(settings, first_admin.api_key or settings.admin_api_key)
        if on_first_admin is not None:
            on_first_admin(first_admin, settings)
    return services


async def _run_after(first: asyncio.Task[None], work: Callable[[Services], object], services: Services) -> None:
    await asyncio.gather(first, return_exceptions=True)
    result = work(services)
    if asyncio.iscoroutine(result):
        await result


def write_client_config(settings: Settings, token: str | None) -> None:
    """Write the server address and the first admin key for the CLI, readable by the owner only."""
    path = settings.client_config_path
    content = json.dumps({"url": settings.base_url, "token": token}, indent=2)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as config_file:
        config_file.write(content + "\n")
    os.chmod(path, 0o600)
    logger.info("wrote the CLI configuration to %s", path)


def _install_error_handlers(app: FastAPI) -> None:
    def is_inference(request: Request) -> bool:
        return request.url.path.startswith("/v1/")

    @app.exception_handler(TunedockError)
    async def on_domain_error(request: Request, exc: TunedockError) -> JSONResponse:
        request.state.audit_detail = exc.message
        if is_inference(request):
            return openai_domain_error_response(exc)
        return domain_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        request.state.audit_detail = "invalid request body"
        if is_inference(request):
            first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
            return openai_error_response(400, f"Invalid request: {first['msg']}.", "invalid_request")
        return validation_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Unknown paths and wrong methods get the same error bodies as every other failure.
        if exc.status_code == 404:
            message = f"No route {request.url.path}; the API reference is at /docs."
            code = "route_not_found"
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}; the API reference is at /docs."
            code = "method_not_allowed"
        else:
            message, code = str(exc.detail), "http_error"
        if is_inference(request):
            return openai_error_response(exc.status_code, message, code)
        return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(DataError)
    async def on_unstorable_value(request: Request, exc: DataError) -> JSONResponse:
        logger.warning("the database rejected a value of %s %s: %s", request.method, request.url.path, exc.orig)
        message = UNSTORABLE_VALUE
        if is_inference(request):
            return openai_error_response(400, message, "invalid_value")
        return JSONResponse(error_body("invalid_value", message), status_code=400)

    @app.exception_handler(OperationalError)
    async def on_database_unreachable(request: Request, exc: OperationalError) -> JSONResponse:
        logger.error("database unreachable during %s %s: %s", request.method, request.url.path, exc.orig)
        message = DATABASE_UNREACHABLE
        if is_inference(request):
            return openai_error_response(503, message, "database_unavailable")
        return JSONResponse(error_body("database_unavailable", message), status_code=503)

    @app.exception_handler(Exception)
    async def on_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        if is_inference(request):
            logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
            return openai_error_response(500, "Internal server error; the server log has details.")
        return internal_error_response(request, exc)
