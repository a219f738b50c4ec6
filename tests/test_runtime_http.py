"""The model server's HTTP layer: the plain ASGI /v1 routes, their headers and the chunk encoding.

The /v1 routes bypass the framework's routing, so these tests check what framework
routing would otherwise guarantee: status codes, headers, the replica token, bodies
sent in parts and the 405 for a wrong method. The server is a real ``python -m tunedock.runtime`` process.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import orjson
import pytest

from tests.test_model_server import (REQUEST_TIMEOUT_SECONDS, ModelServer, build_tiny_gpt2, launch_model_server,
                                     stop_model_server, wait_until_listening)
from tunedock.runtime.cli import REPLICA_TOKEN_VARIABLE
from tunedock.runtime.engines.streams import GenerationFinished
from tunedock.runtime.openai_responses import SSE_DONE, ChunkWriter, sse_event

pytestmark = pytest.mark.e2e

REPLICA_TOKEN = "test-replica-token"
AUTHORIZED = {"Authorization": f"Bearer {REPLICA_TOKEN}"}
# Text that JSON must escape: quotes, a backslash, a newline, a control character and non-ASCII.
AWKWARD_TEXT = 'say "hi"\\ \n\x01 Grüße 👋'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServer]:
    root = tmp_path_factory.mktemp("runtime-http")
    # The model server reads the token from its environment, which it inherits from this process.
    os.environ[REPLICA_TOKEN_VARIABLE] = REPLICA_TOKEN
    try:
        started = launch_model_server(build_tiny_gpt2(root / "model"), "causal-lm", root / "server")
    finally:
        del os.environ[REPLICA_TOKEN_VARIABLE]
    try:
        wait_until_listening(started)
        yield started
    finally:
        stop_model_server(started)


def post(server: ModelServer, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
         ) -> httpx.Response:
    return httpx.post(server.url + path, json=body, headers=AUTHORIZED if headers is None else headers,
                      timeout=REQUEST_TIMEOUT_SECONDS)


def completion_request(**fields: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "hello", "max_tokens": 3, "temperature": 0, **fields}


# --- routes and the replica token --------------------------------------------------------------

def test_missing_replica_token_is_401(server: ModelServer) -> None:
    response = post(server, "/v1/completions", completion_request(), headers={})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "replica_token_required"


def test_wrong_replica_token_is_401(server: ModelServer) -> None:
    response = post(server, "/v1/completions", completion_request(), headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401


def test_replica_token_is_accepted(server: ModelServer) -> None:
    response = post(server, "/v1/completions", completion_request())
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
def test_get_on_inference_route_is_405(server: ModelServer, path: str) -> None:
    response = httpx.get(server.url + path, headers=AUTHORIZED, timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 405
    assert response.json()["error"]["message"] == f"GET {path}: Method Not Allowed"


def test_unknown_post_route_is_404(server: ModelServer) -> None:
    response = post(server, "/v1/unknown", completion_request())
    assert response.status_code == 404


# --- headers and bodies ------------------------------------------------------------------------

def test_json_response_headers(server: ModelServer) -> None:
    response = post(server, "/v1/completions", completion_request())
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-length"] == str(len(response.content))


def test_error_response_headers(server: ModelServer) -> None:
    response = post(server, "/v1/completions", completion_request(max_tokens=0))
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"


def test_streamed_response_headers(server: ModelServer) -> None:
    with httpx.stream("POST", server.url + "/v1/completions", json=completion_request(stream=True),
                      headers=AUTHORIZED, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        response.read()
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


def test_streamed_response_ends_with_done(server: ModelServer) -> None:
    with httpx.stream("POST", server.url + "/v1/chat/completions",
                      json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                            "stream": True, "stream_options": {"include_usage": True}},
                      headers=AUTHORIZED, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        raw = response.read()
    assert raw.endswith(SSE_DONE)


def test_body_sent_in_parts_is_read(server: ModelServer) -> None:
    body = orjson.dumps(completion_request())
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {REPLICA_TOKEN}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    middle = len(body) // 2
    with socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_TIMEOUT_SECONDS) as connection:
        connection.sendall(head.encode())
        for part in (body[:middle], body[middle:]):
            connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))
        connection.sendall(b"0\r\n\r\n")
        response = read_until_closed(connection)
    assert response.startswith(b"HTTP/1.1 200 ")


def read_until_closed(connection: socket.socket) -> bytes:
    parts = []
    while chunk := connection.recv(65536):
        parts.append(chunk)
    return b"".join(parts)


# --- the chunk encoding ------------------------------------------------------------------------

def expected_chunk(writer_event: bytes, kind: Literal["completion", "chat"], model: str, content: Any,
                   include_usage: bool) -> bytes:
    """Return the event that ``writer_event`` should equal: its chunk built as a dict and encoded by ``sse_event``."""
    sent = orjson.loads(writer_event.removeprefix(b"data: "))
    choice: dict[str, Any] = {"index": 0, ("delta" if kind == "chat" else "text"): content,
                              "logprobs": None, "finish_reason": None}
    chunk = {"id": sent["id"], "object": sent["object"], "created": sent["created"], "model": model,
             "choices": [choice]}
    if include_usage:
        chunk["usage"] = None
    return sse_event(chunk)


@pytest.mark.parametrize("include_usage", [False, True], ids=["without-usage", "with-usage"])
@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_text_event_equals_dict_encoding(kind: Literal["completion", "chat"], include_usage: bool) -> None:
    model = 'm/x"y'
    writer = ChunkWriter(kind, model, include_usage)
    event = writer.text(AWKWARD_TEXT)
    content = {"content": AWKWARD_TEXT} if kind == "chat" else AWKWARD_TEXT
    assert event == expected_chunk(event, kind, model, content, include_usage)


@pytest.mark.parametrize("kind", ["completion", "chat"])
def test_text_events_share_id(kind: Literal["completion", "chat"]) -> None:
    writer = ChunkWriter(kind, "m", include_usage=False)
    first, second = (orjson.loads(writer.text(text).removeprefix(b"data: ")) for text in ("a", "b"))
    assert first["id"] == second["id"]


def test_closing_events_end_with_usage_and_done() -> None:
    writer = ChunkWriter("completion", "m", include_usage=True)
    events = writer.closing(GenerationFinished(finish_reason="length", prompt_tokens=2, completion_tokens=3))
    payloads = [event.removeprefix(b"data: ") for event in events.split(b"\n\n") if event]
    assert orjson.loads(payloads[0])["choices"][0]["finish_reason"] == "length"
    assert orjson.loads(payloads[1])["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert payloads[2] == b"[DONE]"


def test_chat_opening_announces_assistant() -> None:
    writer = ChunkWriter("chat", "m", include_usage=False)
    chunk = orjson.loads(writer.opening().removeprefix(b"data: "))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_completion_opening_is_empty() -> None:
    assert ChunkWriter("completion", "m", include_usage=False).opening() == b""


def test_model_name_can_contain_marker_like_text() -> None:
    writer = ChunkWriter("completion", "text-of-cmpl-", include_usage=False)
    assert orjson.loads(writer.text("x").removeprefix(b"data: "))["choices"][0]["text"] == "x"

