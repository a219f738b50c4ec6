"""HTTP client of the CLI: where the server is, which token to send, and its error bodies."""

from __future__ import annotations

import json
import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from tunedock.settings import DEFAULT_PORT

DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
REQUEST_TIMEOUT_SECONDS = 60.0


class CliError(Exception):
    """A failure to report to the user in one message, with exit status 1."""


class StreamDropped(CliError):
    """An event stream that failed to connect or broke off.

    ``timed_out`` marks a connected server that sent nothing for the read timeout.
    """

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None


def client_config_path() -> Path:
    home = Path(os.environ.get("TUNEDOCK_HOME", "~/.tunedock")).expanduser()
    return home / "client.json"


def model_path(model: str) -> str:
    return f"/api/models/{quote(model, safe='')}"


def resolve_connection(url: str | None, token: str | None) -> Connection:
    """Pick the server address and token: flags, then environment, then the client config file."""
    stored: dict[str, Any] = {}
    path = client_config_path()
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CliError(f"Cannot read the client configuration {path}: {exc}. Fix or delete it.") from exc
    chosen_url = url or os.environ.get("TUNEDOCK_URL") or stored.get("url") or DEFAULT_URL
    chosen_token = token or os.environ.get("TUNEDOCK_TOKEN") or stored.get("token")
    return Connection(url=chosen_url.rstrip("/"), token=chosen_token)


class ApiClient:
    def __init__(self, connection: Connection) -> None:
        headers = {"Authorization": f"Bearer {connection.token}"} if connection.token else {}
        self.url = connection.url
        self._http = httpx.Client(base_url=connection.url, headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise CliError(f"Cannot reach the Tunedock server at {self.url}: {exc}. Start it with "
                           "`tunedock serve`, or set --url / TUNEDOCK_URL.") from exc
        except httpx.HTTPError as exc:
            raise CliError(f"Request {method} {path} to {self.url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise CliError(_error_message(response))
        return response.json() if response.content else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def stream_lines(self, path: str, headers: dict[str, str] | None = None) -> Generator[str, None, None]:
        """Yield the lines of a streamed GET response, and raise StreamDropped if the connection fails."""
        try:
            with self._http.stream("GET", path, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    raise CliError(_error_message(response))
                yield from response.iter_lines()
        except httpx.ReadTimeout as exc:
            raise StreamDropped(f"GET {path} to {self.url} timed out after {REQUEST_TIMEOUT_SECONDS:.0f} s "
                                "without data", timed_out=True) from exc
        except httpx.TransportError as exc:
            raise StreamDropped(f"GET {path} to {self.url} failed: {exc!r}") from exc


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
    except (json.JSONDecodeError, AttributeError):
        return f"The server answered {response.status_code}: {response.text[:300]}"
    message = error.get("message") or response.text[:300]
    fields = error.get("details", {}).get("fields") if isinstance(error.get("details"), dict) else None
    if fields:
        lines = [f"  {item['field']}: {item['message']} (got {item['value']!r})" for item in fields]
        return "Invalid request:\n" + "\n".join(lines)
    return f"{message} (HTTP {response.status_code}, {error.get('code', 'error')})"
