"""Console sessions: the sign-in cookie, the CSRF token and the signed-in user.

The session cookie contains the personal access token that ``AccountService.login`` issues,
and nothing else. Every request authenticates it again, so a revoked or expired token
or a disabled user ends the session at once.

The CSRF token of a session is an HMAC of that token: pages put it in a hidden field or an
``X-CSRF-Token`` header, and every state-changing request must send it back. A page
from another site can make the browser send the cookie but cannot read the token. The
sign-in form, which has no session yet, uses a random value kept in a second cookie
(the double-submit pattern).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from fastapi import Request, Response

from tunedock.accounts.identity import Principal
from tunedock.api.dependencies import WRITER_ROLES
from tunedock.errors import AuthenticationFailed, PermissionDenied
from tunedock.services import Services

logger = logging.getLogger(__name__)

SESSION_COOKIE = "tunedock_session"
SIGN_IN_COOKIE = "tunedock_sign_in"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
_CSRF_LABEL = b"tunedock console csrf v1"


class SignInRequired(Exception):
    """The request has no valid session, so the console redirects to the sign-in page."""


class CsrfRejected(Exception):
    """A state-changing request without the session's CSRF token, rejected with 403."""


@dataclass(frozen=True)
class ConsoleSession:
    principal: Principal
    token: str

    @property
    def csrf_token(self) -> str:
        return csrf_token_for(self.token)

    @property
    def can_write(self) -> bool:
        return self.principal.role in WRITER_ROLES


def csrf_token_for(secret: str) -> str:
    return hmac.new(secret.encode("utf-8"), _CSRF_LABEL, hashlib.sha256).hexdigest()


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def optional_session(request: Request) -> ConsoleSession | None:
    """Return the signed-in session, or None when the cookie is missing or no longer valid."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        principal = services_of(request).accounts.authenticate(token)
    except AuthenticationFailed as exc:
        logger.info("console session rejected: %s", exc.code)
        return None
    return ConsoleSession(principal=principal, token=token)


def require_session(request: Request) -> ConsoleSession:
    session = optional_session(request)
    if session is None:
        raise SignInRequired()
    request.state.principal = session.principal  # for the audit event of the request
    return session


async def require_csrf(request: Request, session: ConsoleSession) -> None:
    """Raise CsrfRejected unless the form field or header carries the session's token."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and _is_form(request):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not sent or not hmac.compare_digest(sent, session.csrf_token):
        logger.warning("CSRF check failed for %s %s by %s", request.method, request.url.path,
                       session.principal.username)
        raise CsrfRejected()


def require_writer(session: ConsoleSession) -> None:
    if not session.can_write:
        raise PermissionDenied(f"User {session.principal.username} has role {session.principal.role!r}; this "
                               "action needs the developer or admin role.", code="role_required")


def _is_form(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


def set_session_cookie(request: Request, response: Response, token: str) -> None:
    # No max-age: the session ends when the browser closes, and the token expires by itself later.
    response.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax", secure=_is_https(request),
                        path="/")


def clear_session_cookie(response: Response) -> None:
    response.delete_cookie(SESSION_COOKIE, path="/")


def sign_in_nonce(request: Request) -> str:
    """Return the CSRF value of the sign-in form: the browser's current one, or a new one."""
    return request.cookies.get(SIGN_IN_COOKIE) or secrets.token_urlsafe(24)


def set_sign_in_cookie(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(SIGN_IN_COOKIE, nonce, httponly=True, samesite="strict", secure=_is_https(request),
                        path="/sign-in")


def sign_in_nonce_matches(request: Request, sent: str | None) -> bool:
    expected = request.cookies.get(SIGN_IN_COOKIE)
    return bool(expected and sent and hmac.compare_digest(expected, sent))


def _is_https(request: Request) -> bool:
    return request.url.scheme == "https" or services_of(request).settings.console_base_url.startswith("https:")


def safe_next(target: str | None) -> str:
    """Return a local path to go to after signing in; anything else becomes the models page."""
    if not target:
        return "/models"
    parts = urlsplit(target)
    # Browsers read a backslash as a slash, so "/\\host" would leave the site too.
    if parts.scheme or parts.netloc or not target.startswith("/") or target[1:2] in ("/", "\\"):
        return "/models"
    return target


def sign_in_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/sign-in?next={quote(target, safe='')}"
