"""Parsing and validation of OpenAI request bodies into engine inputs.

Fields the model server does not implement yet are rejected with a 400 that names
them, unless they carry their neutral value (``n: 1``, ``logprobs: false``, ...), so a
client never gets a response that silently ignored part of its request. Unknown
fields are rejected as the OpenAI API does. ``user`` is accepted and has no effect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tunedock.errors import InvalidInput
from tunedock.runtime.engines.base import ChatMessage, GenerationParams
from tunedock.runtime.generation_defaults import MAX_TEMPERATURE, GenerationDefaults
from tunedock.runtime.validation import (read_integer, read_number, read_stop, read_string,
                                         reject_unknown_fields, reject_unsupported)

EncodingFormat = Literal["float", "base64"]

MAX_EMBEDDING_INPUTS = 2048
# torch.manual_seed accepts seeds in this range.
MIN_SEED, MAX_SEED = -(2**63), 2**64 - 1
CHAT_ROLES = ("system", "developer", "user", "assistant")
# Message keys that may be sent with a neutral value, as SDKs do when they echo an
# earlier assistant message back.
_MESSAGE_KEYS = frozenset({"role", "content", "name"})

_GENERATION_FIELDS = frozenset({
    "model", "max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "stream",
    "stream_options", "n", "logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "user",
})
COMPLETION_FIELDS = _GENERATION_FIELDS | {"prompt", "best_of", "echo", "suffix"}
CHAT_FIELDS = _GENERATION_FIELDS | {
    "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice", "functions",
    "function_call", "parallel_tool_calls", "response_format",
}
STREAM_OPTION_FIELDS = frozenset({"include_usage"})
EMBEDDING_FIELDS = frozenset({"model", "input", "encoding_format", "dimensions", "user"})


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """``stream`` and ``stream_options.include_usage`` of a generation request."""

    stream: bool = False
    include_usage: bool = False


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str | None
    prompt: str
    params: GenerationParams
    streaming: StreamOptions = StreamOptions()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str | None
    messages: tuple[ChatMessage, ...]
    params: GenerationParams
    streaming: StreamOptions = StreamOptions()


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    model: str | None
    inputs: tuple[str, ...]
    encoding_format: EncodingFormat


def parse_completion_request(body: Mapping[str, Any], defaults: GenerationDefaults) -> CompletionRequest:
    """Validate a /v1/completions body; raise InvalidInput naming the first bad field."""
    reject_unknown_fields(body, COMPLETION_FIELDS)
    _reject_unsupported_generation_fields(body)
    reject_unsupported(body, "logprobs", (), "log probabilities are not returned yet")
    reject_unsupported(body, "best_of", (1,), "only one candidate is generated per request")
    reject_unsupported(body, "echo", (False,), "the prompt is not echoed in the completion")
    reject_unsupported(body, "suffix", ("",), "inserting text before a suffix is not implemented")
    prompt = _read_prompt(body)
    params = _read_generation_params(body, defaults, read_integer(body, "max_tokens", 1))
    return CompletionRequest(model=_read_model(body), prompt=prompt, params=params,
                             streaming=_read_stream_options(body))


def parse_chat_request(body: Mapping[str, Any], defaults: GenerationDefaults) -> ChatRequest:
    """Validate a /v1/chat/completions body; raise InvalidInput naming the first bad field."""
    reject_unknown_fields(body, CHAT_FIELDS)
    _reject_unsupported_generation_fields(body)
    reject_unsupported(body, "logprobs", (False,), "log probabilities are not returned yet")
    reject_unsupported(body, "top_logprobs", (), "log probabilities are not returned yet")
    for name in ("tools", "functions"):
        reject_unsupported(body, name, ([],), "tool and function calling is not implemented yet")
    for name in ("tool_choice", "function_call"):
        reject_unsupported(body, name, ("none",), "tool and function calling is not implemented yet")
    reject_unsupported(body, "parallel_tool_calls", (True, False), "tool calling is not implemented yet")
    reject_unsupported(body, "response_format", ({"type": "text"},), "only plain text responses are produced")
    messages = _read_messages(body)
    params = _read_generation_params(body, defaults, _read_chat_max_tokens(body))
    return ChatRequest(model=_read_model(body), messages=messages, params=params,
                       streaming=_read_stream_options(body))


def parse_embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    """Validate a /v1/embeddings body; raise InvalidInput naming the first bad field."""
    reject_unknown_fields(body, EMBEDDING_FIELDS)
    reject_unsupported(body, "dimensions", (), "embeddings always have the model's full size")
    inputs = _read_embedding_inputs(body)
    encoding_format = read_string(body, "encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise InvalidInput(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}.",
                           param="encoding_format", code="invalid_value")
    return EmbeddingRequest(model=_read_model(body), inputs=inputs, encoding_format=encoding_format)


def _reject_unsupported_generation_fields(body: Mapping[str, Any]) -> None:
    reject_unsupported(body, "n", (1,), "only one choice is generated per request")
    for name in ("presence_penalty", "frequency_penalty"):
        reject_unsupported(body, name, (0, 0.0), "repetition penalties are not implemented yet")
    reject_unsupported(body, "logit_bias", ({},), "logit_bias is not implemented yet")


def _read_stream_options(body: Mapping[str, Any]) -> StreamOptions:
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidInput(f"stream must be true or false, got {stream!r}.", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is None:
        return StreamOptions(stream=bool(stream))
    if not stream:
        raise InvalidInput("stream_options is only allowed when stream is true; remove it or set stream to true.",
                           param="stream_options", code="invalid_value")
    if not isinstance(options, dict):
        raise InvalidInput("stream_options must be an object such as {\"include_usage\": true}.",
                           param="stream_options", code="invalid_type")
    reject_unknown_fields(options, STREAM_OPTION_FIELDS)
    include_usage = options.get("include_usage")
    if include_usage is not None and not isinstance(include_usage, bool):
        raise InvalidInput(f"stream_options.include_usage must be true or false, got {include_usage!r}.",
                           param="stream_options.include_usage", code="invalid_type")
    return StreamOptions(stream=True, include_usage=bool(include_usage))


def _read_generation_params(body: Mapping[str, Any], defaults: GenerationDefaults,
                            max_tokens: int | None) -> GenerationParams:
    temperature = read_number(body, "temperature", 0.0, MAX_TEMPERATURE)
    top_p = read_number(body, "top_p", 0.0, 1.0)
    top_k = read_integer(body, "top_k", 0)
    stop = read_stop(body)
    return GenerationParams(
        temperature=defaults.temperature if temperature is None else temperature,
        top_p=defaults.top_p if top_p is None else top_p,
        top_k=defaults.top_k if top_k is None else top_k,
        max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        max_tokens_requested=max_tokens is not None,
        stop=defaults.stop if stop is None else stop,
        seed=read_integer(body, "seed", MIN_SEED, MAX_SEED),
    )


def _read_chat_max_tokens(body: Mapping[str, Any]) -> int | None:
    # max_completion_tokens is the newer name of max_tokens in the chat API.
    max_tokens = read_integer(body, "max_tokens", 1)
    max_completion_tokens = read_integer(body, "max_completion_tokens", 1)
    if None not in (max_tokens, max_completion_tokens) and max_tokens != max_completion_tokens:
        raise InvalidInput(
            f"max_tokens ({max_tokens}) and max_completion_tokens ({max_completion_tokens}) differ; "
            "send only max_completion_tokens.", param="max_tokens", code="invalid_value")
    return max_completion_tokens if max_completion_tokens is not None else max_tokens


def _read_model(body: Mapping[str, Any]) -> str | None:
    return read_string(body, "model") or None


def _read_prompt(body: Mapping[str, Any]) -> str:
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidInput("prompt is required: send the text to complete as a string.",
                           param="prompt", code="missing_required_parameter")
    if isinstance(prompt, list):
        prompt = _single_prompt(prompt)
    if not isinstance(prompt, str):
        raise InvalidInput("prompt must be a string or a list of one string.",
                           param="prompt", code="invalid_type")
    if not prompt:
        raise InvalidInput("prompt must not be empty.", param="prompt", code="invalid_value")
    return prompt


def _single_prompt(prompts: list[Any]) -> Any:
    if prompts and all(isinstance(item, int) and not isinstance(item, bool) for item in prompts):
        raise InvalidInput("prompt as a list of token ids is not supported; send the prompt as text.",
                           param="prompt", code="unsupported_parameter")
    if len(prompts) > 1:
        raise InvalidInput(f"prompt is a list of {len(prompts)} prompts, but this model server takes "
                           "one prompt per request; send one request per prompt.",
                           param="prompt", code="unsupported_parameter")
    if not prompts:
        raise InvalidInput("prompt must not be an empty list.", param="prompt", code="invalid_value")
    return prompts[0]


def _read_messages(body: Mapping[str, Any]) -> tuple[ChatMessage, ...]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidInput("messages is required: send a list of {role, content} objects.",
                           param="messages", code="missing_required_parameter")
    if not isinstance(messages, list):
        raise InvalidInput("messages must be a list of {role, content} objects.",
                           param="messages", code="invalid_type")
    if not messages:
        raise InvalidInput("messages must contain at least one message.",
                           param="messages", code="invalid_value")
    return tuple(_read_message(message, f"messages[{index}]") for index, message in enumerate(messages))


def _read_message(message: Any, param: str) -> ChatMessage:
    """Read one message; ``name`` is accepted but not shown to the model."""
    if not isinstance(message, dict):
        raise InvalidInput(f"{param} must be an object with role and content.", param=param, code="invalid_type")
    for key, value in message.items():
        if key not in _MESSAGE_KEYS and value not in (None, []):
            raise InvalidInput(f"{param}.{key} is not supported by this model server; remove it.",
                               param=f"{param}.{key}", code="unsupported_parameter")

    role = message.get("role")
    if role == "tool":
        raise InvalidInput(f"{param} has role 'tool', but tool calling is not implemented yet.",
                           param=f"{param}.role", code="unsupported_parameter")
    if role not in CHAT_ROLES:
        raise InvalidInput(f"{param}.role must be one of {', '.join(CHAT_ROLES)}, got {role!r}.",
                           param=f"{param}.role", code="invalid_value")
    return ChatMessage(role=role, content=_read_content(message.get("content"), f"{param}.content"))


def _read_content(content: Any, param: str) -> str:
    """Read a message's content: a string, or text parts joined with newlines."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidInput(f"{param} must be a string or a list of text parts.", param=param, code="invalid_type")
    texts = []
    for part in content:
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            raise InvalidInput(f"{param} contains a part that is not {{\"type\": \"text\", \"text\": ...}}; "
                               "only text content is supported.", param=param, code="unsupported_parameter")
        texts.append(part["text"])
    return "\n".join(texts)


def _read_embedding_inputs(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("input")
    if value is None:
        raise InvalidInput("input is required: send a string or a list of strings.",
                           param="input", code="missing_required_parameter")
    inputs = [value] if isinstance(value, str) else value
    if not isinstance(inputs, list) or not all(isinstance(item, str) for item in inputs):
        raise InvalidInput("input must be a string or a list of strings; token ids are not supported.",
                           param="input", code="invalid_type")
    if not inputs:
        raise InvalidInput("input must not be an empty list.", param="input", code="invalid_value")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise InvalidInput(f"input has {len(inputs)} items; at most {MAX_EMBEDDING_INPUTS} are allowed "
                           "per request.", param="input", code="invalid_value")
    for index, item in enumerate(inputs):
        if not item:
            subject = "input" if isinstance(value, str) else f"input[{index}]"
            raise InvalidInput(f"{subject} is an empty string; every input needs some text.",
                               param="input", code="invalid_value")
    return tuple(inputs)
