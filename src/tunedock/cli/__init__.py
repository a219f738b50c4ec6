"""The ``tunedock`` command: a client of the HTTP API, plus ``serve`` to run the server."""
