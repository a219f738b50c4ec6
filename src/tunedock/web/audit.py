"""Audit events for the console's state-changing requests, with the management API's action names.

The audit middleware records requests under /api/ only, so console routes record their
own events here, after the response is built, refused and failed attempts included. The
targets read as the API's do, followed by "(console)".
"""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tunedock.accounts import audit
from tunedock.accounts.audit import Actor

ANONYMOUS = Actor(name="anonymous")
# Console route (method, path template) -> audit action; sign-in records its own events.
ACTIONS = {
    ("POST", "/models"): "model.register",
    ("POST", "/models/{slug}/deploy"): "deployment.deploy",
    ("POST", "/deployments/{deployment_id}/redeploy"): "deployment.redeploy",
    ("POST", "/deployments/{deployment_id}/undeploy"): "deployment.undeploy",
    ("POST", "/deployments/{deployment_id}/keep-alive"): "deployment.keep_alive",
    ("POST", "/jobs/{job_id}/cancel"): "job.cancel",
    ("POST", "/keys"): "key.create",
    ("POST", "/keys/{key_id}/revoke"): "key.revoke",
    ("POST", "/playground/key"): "key.create",
    ("POST", "/sign-out"): "auth.sign_out",
}


def note_target(request: Request, target: str) -> None:
    """Name what the request acted on, e.g. the new deployment, for its audit event."""
    request.state.audit_target = target


def note_failure(request: Request, message: str) -> None:
    """Keep why a request failed, for its audit event."""
    request.state.audit_detail = message


async def record_request(request: Request, path_template: str, status_code: int) -> None:
    action = ACTIONS.get((request.method, path_template))
    if action is None:
        return
    principal = getattr(request.state, "principal", None)
    actor = Actor.of(principal) if principal is not None else ANONYMOUS
    target = getattr(request.state, "audit_target", None) or ", ".join(
        f"{name}={value}" for name, value in request.path_params.items()) or path_template
    outcome = "success"
    if status_code in (401, 403):
        outcome = "denied"
    elif status_code >= 400:
        outcome = "failed"
    address = request.client.host if request.client else None
    await run_in_threadpool(audit.record, request.app.state.services.database, actor, action, f"{target} (console)",
                            outcome, status_code, getattr(request.state, "audit_detail", None), address)
