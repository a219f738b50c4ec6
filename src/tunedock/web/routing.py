"""The console's route class: turns session and domain errors into pages, not JSON."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.responses import RedirectResponse, Response

from tunedock.api.errors import error_body
from tunedock.errors import TunedockError
from tunedock.web.audit import note_failure, record_request
from tunedock.web.session import CsrfRejected, SignInRequired, clear_session_cookie, optional_session, sign_in_url
from tunedock.web.templating import render

logger = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Response]]


class ConsoleRoute(APIRoute):
    """Respond to a missing session with a redirect and to errors with an HTML page.

    Browser requests that ask for JSON (``fetch`` from the console's scripts) get the
    management API's error body instead, so scripts can show the message.
    """

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        path_template = self.path

        async def handle(request: Request) -> Response:
            response = await _page_or_error(handler, request)
            await record_request(request, path_template, response.status_code)
            return response

        return handle


async def _page_or_error(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except SignInRequired:
        return _sign_in_required(request)
    except CsrfRejected:
        note_failure(request, "missing or wrong CSRF token")
        return _error_page(request, 403, "Request rejected",
                           "The form was missing its security token or the token is out of date. "
                           "Reload the page and try again.")
    except TunedockError as exc:
        if exc.status_code >= 500:
            logger.error("console request %s %s failed with %s: %s", request.method, request.url.path,
                         exc.code, exc.message)
        else:
            logger.info("console request %s %s rejected with %s: %s", request.method, request.url.path,
                        exc.code, exc.message)
        note_failure(request, exc.message)
        return _error_page(request, exc.status_code, _title(exc.status_code), exc.message)


def _sign_in_required(request: Request) -> Response:
    if _wants_json(request):
        response: Response = _json_error(401, "sign_in_required", "Your session has ended; sign in again.")
    elif request.method == "GET":
        response = RedirectResponse(sign_in_url(request), status_code=303)
    else:
        response = RedirectResponse("/sign-in", status_code=303)
    clear_session_cookie(response)
    return response


def _error_page(request: Request, status_code: int, title: str, message: str) -> Response:
    if _wants_json(request):
        return _json_error(status_code, "console_error", message)
    return render(request, "error.html", optional_session(request), status_code=status_code,
                  title=title, message=message)


def _json_error(status_code: int, code: str, message: str) -> Response:
    return JSONResponse(error_body(code, message), status_code=status_code)


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def _title(status_code: int) -> str:
    titles = {400: "Invalid request", 401: "Sign-in required", 403: "Not allowed", 404: "Not found",
              409: "Not possible right now", 422: "Invalid request"}
    return titles.get(status_code, "Something went wrong")
