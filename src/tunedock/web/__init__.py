"""The web console: server-rendered pages over the same service layer as the management API.

``router`` holds every page; ``static_files()`` serves the console's CSS and scripts under
``STATIC_PREFIX``. Both are added to the application in ``tunedock.app``.
"""

from __future__ import annotations

from fastapi import APIRouter
from starlette.staticfiles import StaticFiles

from tunedock.web.templating import STATIC_DIR, STATIC_PREFIX
from tunedock.web.views import auth, deploy, endpoint, history, jobs, keep_alive, keys, models, playground

__all__ = ["STATIC_PREFIX", "router", "static_files"]

router = APIRouter(include_in_schema=False)
for _pages in (auth, models, deploy, endpoint, history, jobs, keep_alive, playground, keys):
    router.include_router(_pages.router)


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC_DIR)
