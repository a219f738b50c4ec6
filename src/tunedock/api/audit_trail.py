"""ASGI middleware that writes an audit event for every state-changing management request.

It sees each POST, PUT, PATCH and DELETE under ``/api/`` after the route has answered, so
refused and failed attempts are recorded as well as successful ones. Routes may name the
target more precisely (``request.state.audit_target``) and error handlers add the reason
(``request.state.audit_detail``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunedock.accounts import audit
from tunedock.accounts.audit import Actor

logger = logging.getLogger(__name__)

CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANONYMOUS = Actor(name="anonymous")
# Sign-in writes its own events, with the username that tried.
SELF_AUDITED = frozenset({"/api/auth/login"})
# POST routes that change nothing: they carry a secret in the body, so they are not GETs.
READ_ONLY_POSTS = ("/endpoint",)
ACTIONS = {
    ("POST", "/api/models"): "model.register",
    ("DELETE", "/api/models/{model}"): "model.delete",
    ("POST", "/api/models/{model}/deployments"): "deployment.deploy",
    ("POST", "/api/deployments/{deployment_id}/redeploy"): "deployment.redeploy",
    ("POST", "/api/deployments/{deployment_id}/undeploy"): "deployment.undeploy",
    ("POST", "/api/deployments/{deployment_id}/keep-alive"): "deployment.keep_alive",
    ("POST", "/api/jobs/{job_id}/cancel"): "job.cancel",
    ("POST", "/api/keys"): "key.create",
    ("DELETE", "/api/keys/{key_id}"): "key.revoke",
    ("POST", "/api/users"): "user.create",
    ("PATCH", "/api/users/{username}"): "user.update",
    ("POST", "/api/users/{username}/reset-password"): "user.reset_password",
    ("PUT", "/api/users/me/notifications"): "user.notifications",
    ("PUT", "/api/models/{model}/watch"): "model.watch",
    ("DELETE", "/api/models/{model}/watch"): "model.unwatch",
    ("POST", "/api/models/{model}/webhooks"): "webhook.add",
    ("DELETE", "/api/webhooks/{webhook_id}"): "webhook.delete",
}


class AuditTrailMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] not in CHANGING_METHODS
                or not scope["path"].startswith("/api/") or scope["path"] in SELF_AUDITED
                or scope["path"].endswith(READ_ONLY_POSTS)):
            await self.app(scope, receive, send)
            return
        status: dict[str, int] = {}

        async def remember_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, remember_status)
        finally:
            await self._record(scope, status.get("code", 500))

    async def _record(self, scope: Scope, status_code: int) -> None:
        state: dict[str, Any] = scope.get("state", {})
        route = scope.get("route")
        template = getattr(route, "path", scope["path"])
        action = ACTIONS.get((scope["method"], template), f"{scope['method']} {template}")
        parameters = scope.get("path_params", {})
        target = state.get("audit_target") or ", ".join(f"{key}={value}" for key, value in parameters.items())
        principal = state.get("principal")
        actor = Actor.of(principal) if principal is not None else ANONYMOUS
        client = scope.get("client")
        address = client[0] if client else None
        outcome = "success"
        if status_code in (401, 403):
            outcome = "denied"
        elif status_code >= 400:
            outcome = "failed"
        services = scope["app"].state.services
        await asyncio.to_thread(audit.record, services.database, actor, action, target, outcome, status_code,
                                state.get("audit_detail"), address)
