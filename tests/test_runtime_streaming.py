"""Streaming, cancellation, backpressure and seeds of the model server, over real HTTP.

The streaming tests use a scripted byte-level GPT-2, a real transformers model with
weights set by hand. After the two-token prompt ``ok``, greedy decoding writes ``SCRIPT``
(multi-byte characters, one token per UTF-8 byte) and then its end-of-sequence token. Cancellation and backpressure use the tiny random T5, which has
no context limit and so can be kept generating for as long as a test needs.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import torch
from starlette.testclient import TestClient
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tests.test_model_server import (REQUEST_TIMEOUT_SECONDS, ModelServer, build_tiny_gpt2, build_tiny_t5,
                                     launch_model_server, stop_model_server, wait_until_listening)
from tunedock.errors import InvalidInput
from tunedock.runtime.app import ServerSettings, create_app
from tunedock.runtime.engines.base import ModelFormat, PreparedGeneration
from tunedock.runtime.engines.streams import GenerationStream
from tunedock.runtime.generation_defaults import GenerationDefaults

pytestmark = pytest.mark.e2e

SCRIPT = "Grüße 👋 日本語!"
SCRIPT_PROMPT = "ok"
SCRIPT_CONTEXT = 64
LONG_GENERATION_TOKENS = 5000
STATS_TIMEOUT_SECONDS = 60.0


def build_scripted_gpt2(directory: Path, script: str, prompt_tokens: int) -> Path:
    """Save a GPT-2 whose greedy output after any ``prompt_tokens``-token prompt is ``script``.

    One attention block has all weights zero, so it adds nothing. Each token embedding is
    a one-hot row, and the position embedding of each position has a large value at the
    id of the token to write next, so the tied output layer picks that token.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocabulary = {char: index for index, char in enumerate(alphabet)}
    end_id = len(vocabulary)
    vocabulary["<|endoftext|>"] = end_id
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>",
                            bos_token="<|endoftext|>").save_pretrained(directory)

    targets = tokenizer.encode(script).ids + [end_id]
    config = GPT2Config(vocab_size=end_id + 1, n_embd=264, n_layer=1, n_head=1, n_positions=SCRIPT_CONTEXT,
                        bos_token_id=end_id, eos_token_id=end_id)
    model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        for norm in (model.transformer.ln_f, model.transformer.h[0].ln_1, model.transformer.h[0].ln_2):
            norm.weight.fill_(1.0)
        model.transformer.wte.weight.copy_(torch.eye(end_id + 1, 264))
        for position in range(SCRIPT_CONTEXT):
            target = targets[min(max(position - (prompt_tokens - 1), 0), len(targets) - 1)]
            model.transformer.wpe.weight[position, target] = 8.0
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelServer]]:
    root = tmp_path_factory.mktemp("streaming")
    tiny_t5 = build_tiny_t5(root / "tiny-t5-model")
    started = {
        "scripted": launch_model_server(build_scripted_gpt2(root / "scripted-model", SCRIPT, 2), "causal-lm",
                                        root / "scripted"),
        "tiny-gpt2": launch_model_server(build_tiny_gpt2(root / "tiny-gpt2-model"), "causal-lm", root / "tiny-gpt2"),
        "tiny-t5": launch_model_server(tiny_t5, "seq2seq-lm", root / "tiny-t5"),
        "narrow": launch_model_server(tiny_t5, "seq2seq-lm", root / "narrow", "--max-batch-size", "1",
                                      "--max-queue-size", "1"),
    }
    try:
        for server in started.values():
            wait_until_listening(server)
        yield started
    finally:
        for server in started.values():
            stop_model_server(server)


def read_events(server: ModelServer, path: str, body: dict[str, Any]) -> list[str]:
    """POST a streaming request and return the payload of each server-sent event."""
    with httpx.stream("POST", server.url + path, json={"model": "m", "stream": True, **body},
                      timeout=REQUEST_TIMEOUT_SECONDS) as response:
        assert response.status_code == 200, response.read()
        raw = response.read().decode()
    events = [event for event in raw.split("\n\n") if event]
    assert all(event.startswith("data: ") and "\n" not in event for event in events), raw
    return [event.removeprefix("data: ") for event in events]


def json_chunks(events: list[str]) -> list[dict[str, Any]]:
    return [orjson.loads(event) for event in events if event != "[DONE]"]


def streamed_text(chunks: list[dict[str, Any]]) -> str:
    return "".join(choice.get("text") or choice.get("delta", {}).get("content") or ""
                   for chunk in chunks for choice in chunk["choices"])


def stats(server: ModelServer) -> dict[str, Any]:
    response = httpx.get(server.url + "/stats", timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200
    return response.json()


def wait_for_stats(server: ModelServer, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    deadline = time.monotonic() + STATS_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        current = stats(server)
        if condition(current):
            return current
        time.sleep(0.02)
    raise AssertionError(f"/stats of {server.url} did not reach the expected state: {stats(server)}")


def script_request(**fields: Any) -> dict[str, Any]:
    return {"prompt": SCRIPT_PROMPT, "max_tokens": 40, "temperature": 0, **fields}


# --- server-sent events ------------------------------------------------------------------------

def test_stream_ends_with_done(servers: dict[str, ModelServer]) -> None:
    events = read_events(servers["scripted"], "/v1/completions", script_request())
    assert events[-1] == "[DONE]"


def test_streamed_text_equals_non_streamed(servers: dict[str, ModelServer]) -> None:
    body = servers["scripted"].post("/v1/completions", script_request()).json()
    events = read_events(servers["scripted"], "/v1/completions", script_request())
    assert streamed_text(json_chunks(events)) == body["choices"][0]["text"]


def test_streamed_text_is_the_script(servers: dict[str, ModelServer]) -> None:
    events = read_events(servers["scripted"], "/v1/completions", script_request())
    assert streamed_text(json_chunks(events)) == SCRIPT


def test_streamed_pieces_are_whole_characters(servers: dict[str, ModelServer]) -> None:
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request()))
    # 👋 and each CJK character take several byte tokens; a piece with a partial one would show U+FFFD.
    assert not any("\ufffd" in chunk["choices"][0]["text"] for chunk in chunks)


def test_finish_reason_only_on_last_chunk(servers: dict[str, ModelServer]) -> None:
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request()))
    reasons = [chunk["choices"][0]["finish_reason"] for chunk in chunks]
    assert reasons[:-1] == [None] * (len(reasons) - 1)
    assert reasons[-1] == "stop"


def test_chunks_share_id_and_object(servers: dict[str, ModelServer]) -> None:
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request()))
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert {chunk["object"] for chunk in chunks} == {"text_completion"}


def test_include_usage_adds_usage_chunk(servers: dict[str, ModelServer]) -> None:
    expected = servers["scripted"].post("/v1/completions", script_request()).json()["usage"]
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions",
                                     script_request(stream_options={"include_usage": True})))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == expected
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_chat_stream_opens_with_assistant_role(servers: dict[str, ModelServer]) -> None:
    events = read_events(servers["tiny-gpt2"], "/v1/chat/completions",
                         {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0})
    chunks = json_chunks(events)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert chunks[-1]["choices"][0]["delta"] == {}


def test_chat_stream_text_equals_non_streamed(servers: dict[str, ModelServer]) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
    expected = servers["tiny-gpt2"].post("/v1/chat/completions", {"model": "m", **body}).json()
    chunks = json_chunks(read_events(servers["tiny-gpt2"], "/v1/chat/completions", body))
    assert streamed_text(chunks) == expected["choices"][0]["message"]["content"]


def test_length_limit_finishes_stream_with_length(servers: dict[str, ModelServer]) -> None:
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request(max_tokens=3)))
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


# --- stop strings --------------------------------------------------------------------------------

def test_stop_string_spanning_tokens_cuts_stream(servers: dict[str, ModelServer]) -> None:
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request(stop=["本語"])))
    assert streamed_text(chunks) == SCRIPT[:SCRIPT.index("本語")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stop_string_never_streamed_in_part(servers: dict[str, ModelServer]) -> None:
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request(stop=["e 👋"])))
    pieces = [chunk["choices"][0]["text"] for chunk in chunks]
    assert not any(piece.endswith("e") or "👋" in piece for piece in pieces if piece)


def test_unmatched_stop_prefix_is_released(servers: dict[str, ModelServer]) -> None:
    # "👋 日X" starts like the script's "👋 日本", so that part is held back, then released.
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request(stop=["👋 日X"])))
    assert streamed_text(chunks) == SCRIPT


def test_stop_string_non_streamed_matches_streamed(servers: dict[str, ModelServer]) -> None:
    body = servers["scripted"].post("/v1/completions", script_request(stop=["語"])).json()
    chunks = json_chunks(read_events(servers["scripted"], "/v1/completions", script_request(stop=["語"])))
    assert body["choices"][0]["text"] == streamed_text(chunks)


# --- errors --------------------------------------------------------------------------------------

def test_error_before_stream_is_http_error(servers: dict[str, ModelServer]) -> None:
    response = servers["scripted"].post("/v1/completions", {"prompt": "a" * 100, "stream": True})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


class _FailingMidStreamEngine:
    """Stands in for an engine whose model fails after its first token."""

    model_format = ModelFormat.CAUSAL_LM

    def prepare_completion(self, prompt: str, params: Any) -> PreparedGeneration:
        if prompt == "bad":
            raise InvalidInput("The prompt is bad.", param="prompt")
        return PreparedGeneration(prompt_ids=(1,), params=params, max_new_tokens=params.max_tokens)

    def submit(self, prepared: PreparedGeneration, stream: GenerationStream) -> None:
        stream.emit_text("partial")
        stream.fail(RuntimeError("secret detail of a failed step"))


def failing_client() -> TestClient:
    settings = ServerSettings(model_path="/m", served_model="m", generation_defaults=GenerationDefaults())
    return TestClient(create_app(_FailingMidStreamEngine(), settings))  # type: ignore[arg-type]


def test_error_after_stream_start_is_error_event() -> None:
    with failing_client() as client:
        response = client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    events = [event.removeprefix("data: ") for event in response.text.split("\n\n") if event]
    assert orjson.loads(events[0])["choices"][0]["text"] == "partial"
    assert orjson.loads(events[-1])["error"]["type"] == "server_error"
    assert "[DONE]" not in events


def test_error_event_hides_internal_detail() -> None:
    with failing_client() as client:
        response = client.post("/v1/completions", json={"prompt": "hi", "stream": True})
    assert "secret detail" not in response.text


# --- cancellation --------------------------------------------------------------------------------

def test_stream_disconnect_stops_decoding(servers: dict[str, ModelServer]) -> None:
    server = servers["tiny-t5"]
    before = stats(server)
    body = {"model": "m", "prompt": "hello", "max_tokens": LONG_GENERATION_TOKENS, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=REQUEST_TIMEOUT_SECONDS) as response:
        for _ in zip(range(3), response.iter_lines()):
            pass
    after = wait_for_stats(server, lambda current: current["running"] == 0)
    assert after["outcomes"].get("cancelled", 0) == before["outcomes"].get("cancelled", 0) + 1
    assert after["generated_tokens"] - before["generated_tokens"] < LONG_GENERATION_TOKENS


def test_non_streamed_disconnect_stops_decoding(servers: dict[str, ModelServer]) -> None:
    server = servers["tiny-t5"]
    before = stats(server)
    with socket.create_connection(("127.0.0.1", server.port)) as connection:
        send_raw_completion(connection, {"prompt": "hello", "max_tokens": LONG_GENERATION_TOKENS, "temperature": 0})
        wait_for_stats(server, lambda current: current["running"] == 1)
    after = wait_for_stats(server, lambda current: current["running"] == 0)
    assert after["outcomes"].get("cancelled", 0) == before["outcomes"].get("cancelled", 0) + 1
    assert after["generated_tokens"] - before["generated_tokens"] < LONG_GENERATION_TOKENS


def send_raw_completion(connection: socket.socket, body: dict[str, Any]) -> None:
    payload = orjson.dumps({"model": "m", **body})
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n")
    connection.sendall(head.encode() + payload)


# --- backpressure --------------------------------------------------------------------------------

def test_full_queue_returns_429_with_retry_after(servers: dict[str, ModelServer]) -> None:
    server = servers["narrow"]
    long_request = {"prompt": "hello", "max_tokens": LONG_GENERATION_TOKENS, "temperature": 0}
    with socket.create_connection(("127.0.0.1", server.port)) as running, \
            socket.create_connection(("127.0.0.1", server.port)) as waiting:
        send_raw_completion(running, long_request)
        wait_for_stats(server, lambda current: current["running"] == 1)
        send_raw_completion(waiting, long_request)
        wait_for_stats(server, lambda current: current["queued"] == 1)
        response = server.post("/v1/completions", {"model": "m", **long_request})
    wait_for_stats(server, lambda current: current["running"] == 0 and current["queued"] == 0)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"


# --- seeds ---------------------------------------------------------------------------------------

def test_seeded_stream_repeats(servers: dict[str, ModelServer]) -> None:
    body = {"prompt": "hello", "max_tokens": 16, "temperature": 1.0, "seed": 11}
    first = streamed_text(json_chunks(read_events(servers["tiny-gpt2"], "/v1/completions", body)))
    second = streamed_text(json_chunks(read_events(servers["tiny-gpt2"], "/v1/completions", body)))
    assert first == second


def test_seeded_stream_equals_non_streamed(servers: dict[str, ModelServer]) -> None:
    body = {"prompt": "hello", "max_tokens": 16, "temperature": 0.8, "top_p": 0.9, "top_k": 20, "seed": 5}
    expected = servers["tiny-gpt2"].post("/v1/completions", {"model": "m", **body}).json()
    streamed = streamed_text(json_chunks(read_events(servers["tiny-gpt2"], "/v1/completions", body)))
    assert streamed == expected["choices"][0]["text"]
