"""The one error body of the management API: ``{"error": {"code", "message", ...}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from tunedock.errors import RateLimited, TunedockError

logger = logging.getLogger(__name__)


def error_body(code: str, message: str, param: str | None = None,
               details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    if details:
        error["details"] = details
    return {"error": error}


def domain_error_response(exc: TunedockError) -> JSONResponse:
    if exc.status_code >= 500:
        logger.error("request failed with %s: %s", exc.code, exc.message)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse(error_body(exc.code, exc.message, exc.param, exc.details),
                        status_code=exc.status_code, headers=headers)


def validation_error_response(exc: RequestValidationError) -> JSONResponse:
    """Return 422 with one entry per invalid field: where it is, its value and what is allowed."""
    fields = []
    for problem in exc.errors():
        if problem["type"] == "json_invalid":
            reason = problem.get("ctx", {}).get("error", "invalid JSON")
            position = problem["loc"][-1] if problem["loc"] else "?"
            return JSONResponse(error_body(
                "invalid_json", f"The request body is not valid JSON ({reason} at character {position}); "
                "send a JSON object."), status_code=400)
        location = ".".join(str(part) for part in problem["loc"] if part != "body")
        message = problem["msg"].removeprefix("Value error, ")
        value = None if problem["type"] == "missing" else jsonable_encoder(problem.get("input"))
        fields.append({"field": location, "message": message, "value": value})
    summary = "; ".join(f"{item['field'] or 'body'}: {item['message']}" for item in fields)
    return JSONResponse(
        error_body("validation_failed", f"Invalid request: {summary}.", details={"fields": fields}),
        status_code=422,
    )


def internal_error_response(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(error_body("internal_error", "Internal server error; the server log has details."),
                        status_code=500)
