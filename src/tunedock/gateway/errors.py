"""The one error body of the inference API, in the shape that OpenAI clients parse."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from tunedock.errors import TunedockError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error_response(status_code: int, message: str, code: str | None = None,
                          param: str | None = None) -> JSONResponse:
    error_type = ERROR_TYPES.get(status_code, "server_error")
    body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
    headers = {"WWW-Authenticate": "Bearer"} if status_code == 401 else None
    return JSONResponse(body, status_code=status_code, headers=headers)


def openai_domain_error_response(exc: TunedockError) -> JSONResponse:
    # The inference API never returns 422: OpenAI clients expect 400 for any invalid request.
    status_code = 400 if exc.status_code == 422 else exc.status_code
    response = openai_error_response(status_code, exc.message, exc.code, exc.param)
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response
