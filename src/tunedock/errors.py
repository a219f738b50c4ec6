"""Domain exceptions of Tunedock.

Every error that crosses a module boundary is one of these. The HTTP layers translate
them into their error bodies (ours under ``/api/``, OpenAI's under ``/v1/``) in one
place each, using ``status_code`` and ``code``::

    TunedockError                      500 internal_error
    ├── InvalidInput                   400 invalid_input
    │   ├── InvalidModelDirectory      400 invalid_model_directory
    │   ├── InvalidParameters          422 validation_failed
    │   └── PayloadTooLarge            413 payload_too_large
    ├── AuthenticationFailed           401 authentication_failed
    ├── PermissionDenied               403 permission_denied
    ├── NotFound                       404 not_found
    ├── Conflict                       409 conflict
    ├── RateLimited                    429 rate_limited
    ├── ModelNotLive                   503 model_not_live
    └── ReplicaError                   502 replica_error
        └── ReplicaStartFailed         502 replica_start_failed

``message`` is a sentence for people: it names the object, the bad value and the next
step. It never contains a secret or an internal stack trace.
"""

from __future__ import annotations

from typing import Any

# Messages for database failures, shared by the management API and the inference gateway.
UNSTORABLE_VALUE = ("A value in the request cannot be stored or searched for, such as text with a NUL character "
                    "(\\u0000) or text longer than its field allows; remove or shorten it.")
DATABASE_UNREACHABLE = "The database is unreachable; retry shortly. The server log has details."


class TunedockError(Exception):
    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.details = details or {}


class InvalidInput(TunedockError):
    status_code = 400
    code = "invalid_input"


class InvalidModelDirectory(InvalidInput):
    """A directory that cannot be registered as a model; ``code`` names the failed check."""

    code = "invalid_model_directory"


class InvalidParameters(InvalidInput):
    """Deployment parameters that the model, the engine or this machine cannot honour.

    ``details["fields"]`` lists each problem as ``{"field", "message", "value"}``, the same
    shape as a request that fails schema validation.
    """

    status_code = 422
    code = "validation_failed"


class PayloadTooLarge(InvalidInput):
    status_code = 413
    code = "payload_too_large"


class AuthenticationFailed(TunedockError):
    status_code = 401
    code = "authentication_failed"


class PermissionDenied(TunedockError):
    status_code = 403
    code = "permission_denied"


class NotFound(TunedockError):
    status_code = 404
    code = "not_found"


class Conflict(TunedockError):
    status_code = 409
    code = "conflict"


class RateLimited(TunedockError):
    """Too many requests; ``retry_after`` is the number of seconds to wait."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class ModelNotLive(TunedockError):
    """The model has no replica to serve; ``retry_after`` is set when it is expected to soon."""

    status_code = 503
    code = "model_not_live"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReplicaError(TunedockError):
    status_code = 502
    code = "replica_error"


class NoReplicaAccepted(ReplicaError):
    """Every replica of a live deployment refused the connection, usually while one restarts."""

    retry_after = 1


class ReplicaStartFailed(ReplicaError):
    code = "replica_start_failed"
