"""Entry point of ``python -m tunedock.runtime``; see tunedock.runtime.cli."""

from tunedock.runtime.cli import main

raise SystemExit(main())
