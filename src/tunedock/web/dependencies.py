"""Dependencies of the console routes: the session, its CSRF check and the services."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from tunedock.record_ids import MAX_ID
from tunedock.services import Services
from tunedock.web.session import ConsoleSession, require_csrf, require_session, services_of


async def checked_session(request: Request,
                          session: Annotated[ConsoleSession, Depends(require_session)]) -> ConsoleSession:
    await require_csrf(request, session)
    return session


ServicesDep = Annotated[Services, Depends(services_of)]
# Pages: a signed-in user, or a redirect to the sign-in page.
SessionDep = Annotated[ConsoleSession, Depends(require_session)]
# State-changing requests: a signed-in user who sent the session's CSRF token.
CheckedSessionDep = Annotated[ConsoleSession, Depends(checked_session)]


async def form_values(request: Request) -> dict[str, str]:
    """Return the submitted form as plain strings; file uploads are ignored."""
    form = await request.form()
    return {name: value for name, value in form.items() if isinstance(value, str)}

# A path id that can name no row fails validation instead of reaching the store.
RecordId = Annotated[int, Path(ge=1, le=MAX_ID, description="A row id, 1 to 2147483647.")]
