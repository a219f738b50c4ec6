"""The endpoint snippets run as pasted: cURL with bash, Python with the openai package, JavaScript with node.

A real server deploys the T5 date normalizer (greedy) and MiniLM embeddings. Each snippet
from GET /api/models/{model}/endpoint runs in its own process with TUNEDOCK_API_KEY set,
and its output is checked against the model: the T5 snippets must print the greedy completion
that transformers computes in this process for the snippet's prompt, and the MiniLM
snippets must print the start of the embedding that the API returns for the snippet's input.
The T5 snippets from POST /api/models/{model}/endpoint, with the key written in, run
without TUNEDOCK_API_KEY.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, deploy_and_wait
from tunedock.demo.registry import demo_models_root, minilm_model_path

pytestmark = pytest.mark.e2e

T5_DIR = demo_models_root() / "date-normalizer-t5"
LANGUAGES = ("curl", "python", "javascript")
SNIPPET_TIMEOUT = 120
EMBEDDING_DIMENSIONS = 384
# The Python and JavaScript embedding snippets print this many leading values.
PRINTED_VALUES = 8
# The curl snippet sends its JSON body as `-d '<body>'`.
CURL_BODY = re.compile(r"-d '(?P<body>.*)'\s*$", re.DOTALL)


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.fail("node is not installed, so the JavaScript snippets cannot run; install Node.js 18 or later "
                    "(Debian: apt-get install -y nodejs).")
    return path


def register_and_deploy(api: httpx.Client, name: str, path: Path, body: dict[str, Any]) -> dict[str, Any]:
    registered = api.post("/api/models", json={"name": name, "path": str(path)})
    assert registered.status_code == 201, registered.text
    job = deploy_and_wait(api, registered.json()["slug"], body)
    assert job["status"] == "success", job
    endpoint: dict[str, Any] = api.get(f"/api/models/{registered.json()['slug']}/endpoint").json()
    return endpoint


@pytest.fixture(scope="module")
def t5_endpoint(api: httpx.Client) -> dict[str, Any]:
    # Temperature 0 as the default, because the snippets send no temperature of their own.
    return register_and_deploy(api, "Snippets T5", T5_DIR, {"generation": {"temperature": 0}})


@pytest.fixture(scope="module")
def minilm_endpoint(api: httpx.Client) -> dict[str, Any]:
    return register_and_deploy(api, "Snippets MiniLM", minilm_model_path(), {})


def snippet_body(endpoint: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON body that the endpoint's curl snippet sends."""
    match = CURL_BODY.search(endpoint["snippets"]["curl"])
    assert match is not None, endpoint["snippets"]["curl"]
    body: dict[str, Any] = json.loads(match["body"].replace("'\\''", "'"))
    return body


def run_snippet(language: str, snippet: str, directory: Path, node: str,
                key_variable: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a snippet as a user would paste it, with the admin key in TUNEDOCK_API_KEY if ``key_variable``."""
    environment = {name: value for name, value in os.environ.items() if name != "TUNEDOCK_API_KEY"}
    if key_variable:
        environment["TUNEDOCK_API_KEY"] = ADMIN_KEY
    if language == "curl":
        command = ["bash", "-c", snippet]
    elif language == "python":
        script = directory / "snippet.py"
        script.write_text(snippet, encoding="utf-8")
        command = [sys.executable, str(script)]
    else:
        script = directory / "snippet.js"
        script.write_text(snippet, encoding="utf-8")
        command = [node, str(script)]
    return subprocess.run(command, capture_output=True, text=True, timeout=SNIPPET_TIMEOUT, env=environment,
                          cwd=directory)


@pytest.fixture(scope="module")
def t5_runs(t5_endpoint: dict[str, Any], node: str,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    return {language: run_snippet(language, t5_endpoint["snippets"][language],
                                  tmp_path_factory.mktemp(f"t5-{language}"), node)
            for language in LANGUAGES}


@pytest.fixture(scope="module")
def t5_filled_in_runs(api: httpx.Client, t5_endpoint: dict[str, Any], node: str,
                      tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run the T5 snippets that have the admin key written in, with no TUNEDOCK_API_KEY set."""
    filled_in = api.post(f"/api/models/{t5_endpoint['model']}/endpoint", json={"api_key": ADMIN_KEY})
    assert filled_in.status_code == 200, filled_in.text
    return {language: run_snippet(language, filled_in.json()["snippets"][language],
                                  tmp_path_factory.mktemp(f"t5-filled-in-{language}"), node, key_variable=False)
            for language in LANGUAGES}


@pytest.fixture(scope="module")
def minilm_runs(minilm_endpoint: dict[str, Any], node: str,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    return {language: run_snippet(language, minilm_endpoint["snippets"][language],
                                  tmp_path_factory.mktemp(f"minilm-{language}"), node)
            for language in LANGUAGES}


@pytest.fixture(scope="module")
def t5_greedy_completion(t5_endpoint: dict[str, Any]) -> str:
    """Decode the T5 snippet's prompt greedily with transformers in this process."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    body = snippet_body(t5_endpoint)
    tokenizer = AutoTokenizer.from_pretrained(T5_DIR)
    model = AutoModelForSeq2SeqLM.from_pretrained(T5_DIR).eval()
    encoded = tokenizer(body["prompt"], return_tensors="pt")
    output = model.generate(**encoded, do_sample=False, max_new_tokens=body["max_tokens"])
    return str(tokenizer.decode(output[0], skip_special_tokens=True))


@pytest.fixture(scope="module")
def minilm_embedding(minilm_endpoint: dict[str, Any], api: httpx.Client) -> list[float]:
    """Return the embedding that the API returns for the MiniLM snippet's own body."""
    response = api.post("/v1/embeddings", json=snippet_body(minilm_endpoint))
    assert response.status_code == 200, response.text
    embedding: list[float] = response.json()["data"][0]["embedding"]
    return embedding


def printed_values(stdout: str) -> list[float]:
    # Python prints a list of floats and node an array of numbers, and both are JSON arrays.
    values: list[float] = json.loads(stdout)
    return values


# T5 completions -----------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_t5_snippet_exits_zero(t5_runs: dict[str, subprocess.CompletedProcess[str]], language: str) -> None:
    run = t5_runs[language]
    assert run.returncode == 0, run.stderr


def test_t5_curl_snippet_returns_greedy_completion(t5_runs: dict[str, subprocess.CompletedProcess[str]],
                                                   t5_greedy_completion: str) -> None:
    assert json.loads(t5_runs["curl"].stdout)["choices"][0]["text"] == t5_greedy_completion


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_t5_snippet_prints_greedy_completion(t5_runs: dict[str, subprocess.CompletedProcess[str]],
                                             t5_greedy_completion: str, language: str) -> None:
    assert t5_runs[language].stdout == t5_greedy_completion + "\n"


@pytest.mark.parametrize("language", LANGUAGES)
def test_t5_filled_in_snippet_exits_zero(t5_filled_in_runs: dict[str, subprocess.CompletedProcess[str]],
                                         language: str) -> None:
    run = t5_filled_in_runs[language]
    assert run.returncode == 0, run.stderr


def test_t5_filled_in_curl_snippet_returns_completion(t5_filled_in_runs: dict[str, subprocess.CompletedProcess[str]],
                                                      t5_greedy_completion: str) -> None:
    assert json.loads(t5_filled_in_runs["curl"].stdout)["choices"][0]["text"] == t5_greedy_completion


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_t5_filled_in_snippet_prints_completion(t5_filled_in_runs: dict[str, subprocess.CompletedProcess[str]],
                                                t5_greedy_completion: str, language: str) -> None:
    assert t5_filled_in_runs[language].stdout == t5_greedy_completion + "\n"


def test_t5_greedy_completion_is_not_empty(t5_greedy_completion: str) -> None:
    # An empty completion would let the checks above pass on a snippet that prints nothing useful.
    assert t5_greedy_completion.strip()


# MiniLM embeddings --------------------------------------------------------------------------


@pytest.mark.parametrize("language", LANGUAGES)
def test_minilm_snippet_exits_zero(minilm_runs: dict[str, subprocess.CompletedProcess[str]],
                                   language: str) -> None:
    run = minilm_runs[language]
    assert run.returncode == 0, run.stderr


def test_minilm_curl_snippet_returns_384_dimensions(minilm_runs: dict[str, subprocess.CompletedProcess[str]]) -> None:
    assert len(json.loads(minilm_runs["curl"].stdout)["data"][0]["embedding"]) == EMBEDDING_DIMENSIONS


def test_minilm_curl_snippet_returns_api_embedding(minilm_runs: dict[str, subprocess.CompletedProcess[str]],
                                                   minilm_embedding: list[float]) -> None:
    served = json.loads(minilm_runs["curl"].stdout)["data"][0]["embedding"]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(served, minilm_embedding, strict=True))


@pytest.mark.parametrize("language", ["python", "javascript"])
def test_minilm_snippet_prints_embedding_start(minilm_runs: dict[str, subprocess.CompletedProcess[str]],
                                               minilm_embedding: list[float], language: str) -> None:
    printed = printed_values(minilm_runs[language].stdout)
    expected = minilm_embedding[:PRINTED_VALUES]
    assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(printed, expected, strict=True)), printed


# Both models ---------------------------------------------------------------------------------


def test_snippets_do_not_contain_the_key(t5_endpoint: dict[str, Any], minilm_endpoint: dict[str, Any]) -> None:
    texts = [*t5_endpoint["snippets"].values(), *minilm_endpoint["snippets"].values()]
    assert not any(ADMIN_KEY in text for text in texts)
