"""Bad inference requests get a 4xx in OpenAI's error shape and leave the server serving.

Every case is sent to a real server with deployed models, and a normal completion is sent
right after it. A model that is not live gets a 503 whose message gives the reason:
never deployed, deploying, failed or un-deployed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, deploy_and_wait, wait_for_job
from tunedock.demo.registry import demo_models_root, minilm_model_path

pytestmark = pytest.mark.e2e

T5_DIR = demo_models_root() / "date-normalizer-t5"
T5 = "inputs-t5"
MINILM = "inputs-minilm"
# The gateway's request body limit: 8 MiB.
MAX_BODY_BYTES = 8 * 1024 * 1024
# Far over the T5 tokenizer's 64 tokens, and far under the body limit.
LONG_PROMPT = "the 5th of March, 2021 " * 2000
NORMAL_REQUEST = {"model": T5, "prompt": "the 5th of March, 2021", "max_tokens": 16}
ERROR_FIELDS = {"message", "type", "param", "code"}
# OpenAI's error types by status code.
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}
# A sparse file of this size makes hashing the model files, the first step of a deploy,
# take minutes, so the deployment stays in the deploying state while the test looks at it.
SPARSE_FILE_BYTES = 1 << 40


@dataclass(frozen=True)
class BadRequest:
    """One bad request: its route, its body, the key it sends and the expected status and param."""

    id: str
    route: str
    body: bytes
    status: int
    param: str | None = None
    key: str = "admin"


def json_body(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def completion(**fields: Any) -> bytes:
    return json_body(model=T5, prompt="the 5th of March, 2021", **fields)


def chat(**fields: Any) -> bytes:
    return json_body(model=T5, messages=[{"role": "user", "content": "the 5th of March, 2021"}], **fields)


TOOL = {"type": "function", "function": {"name": "lookup_date", "parameters": {"type": "object", "properties": {}}}}

BAD_REQUESTS = [
    BadRequest("chat-empty-messages", "chat/completions", json_body(model=T5, messages=[]), 400, "messages"),
    BadRequest("embeddings-empty-list", "embeddings", json_body(model=MINILM, input=[]), 400, "input"),
    BadRequest("embeddings-empty-string", "embeddings", json_body(model=MINILM, input=""), 400, "input"),
    BadRequest("embeddings-list-of-empty-string", "embeddings", json_body(model=MINILM, input=[""]), 400, "input"),
    BadRequest("n-zero", "completions", completion(n=0), 400, "n"),
    BadRequest("n-zero-streamed", "completions", completion(n=0, stream=True), 400, "n"),
    BadRequest("chat-n-zero-streamed", "chat/completions", chat(n=0, stream=True), 400, "n"),
    BadRequest("unknown-model", "completions", json_body(model="no-such-model", prompt="hello"), 404, "model"),
    BadRequest("missing-model", "completions", json_body(prompt="hello"), 400, "model"),
    BadRequest("prompt-over-context", "completions", json_body(model=T5, prompt=LONG_PROMPT), 400, "prompt"),
    BadRequest("prompt-over-context-streamed", "completions",
               json_body(model=T5, prompt=LONG_PROMPT, stream=True), 400, "prompt"),
    BadRequest("chat-over-context-streamed", "chat/completions",
               json_body(model=T5, messages=[{"role": "user", "content": LONG_PROMPT}], stream=True), 400,
               "messages"),
    BadRequest("embedding-over-context", "embeddings", json_body(model=MINILM, input=LONG_PROMPT), 400, "input"),
    BadRequest("malformed-json", "completions", b'{"model": "inputs-t5", "prompt": ', 400),
    BadRequest("json-array-body", "completions", b'["inputs-t5"]', 400),
    BadRequest("body-over-limit", "completions",
               json_body(model=T5, prompt="a" * (MAX_BODY_BYTES + 1)), 413),
    BadRequest("completion-logprobs", "completions", completion(logprobs=2), 400, "logprobs"),
    BadRequest("chat-logprobs", "chat/completions", chat(logprobs=True), 400, "logprobs"),
    BadRequest("chat-tools", "chat/completions", chat(tools=[TOOL]), 400, "tools"),
    BadRequest("completion-n-two", "completions", completion(n=2), 400, "n"),
    BadRequest("chat-n-two-streamed", "chat/completions", chat(n=2, stream=True), 400, "n"),
    BadRequest("prompt-wrong-type", "completions", json_body(model=T5, prompt=5), 400, "prompt"),
    BadRequest("max-tokens-zero", "completions", completion(max_tokens=0), 400, "max_tokens"),
    BadRequest("seq2seq-max-tokens-over-context", "completions", completion(max_tokens=1_000_000), 400,
               "max_tokens"),
    BadRequest("seq2seq-max-tokens-over-context-streamed", "completions",
               completion(max_tokens=1_000_000, stream=True), 400, "max_tokens"),
    BadRequest("missing-key", "completions", completion(), 401, key="none"),
    BadRequest("unknown-key", "completions", completion(), 401, key="unknown"),
    BadRequest("key-for-another-model", "completions", completion(), 403, "model", key="minilm-only"),
    BadRequest("key-without-inference-scope", "completions", completion(), 403, key="management-only"),
]
PARAM_CASES = [case for case in BAD_REQUESTS if case.param is not None]


@dataclass(frozen=True)
class Outcome:
    """The response to a bad request, and the status of the normal request sent right after it."""

    response: httpx.Response
    next_status: int

    def error(self) -> dict[str, Any]:
        error: dict[str, Any] = self.response.json()["error"]
        return error


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


def register(api: httpx.Client, name: str, path: Path) -> str:
    registered = api.post("/api/models", json={"name": name, "path": str(path)})
    assert registered.status_code == 201, registered.text
    slug: str = registered.json()["slug"]
    return slug


def register_and_deploy(api: httpx.Client, name: str, path: Path) -> str:
    slug = register(api, name, path)
    job = deploy_and_wait(api, slug, {"generation": {"temperature": 0}})
    assert job["status"] == "success", job
    return slug


@pytest.fixture(scope="module")
def models(api: httpx.Client) -> dict[str, str]:
    slugs = {"t5": register_and_deploy(api, "Inputs T5", T5_DIR),
             "minilm": register_and_deploy(api, "Inputs MiniLM", minilm_model_path())}
    assert slugs == {"t5": T5, "minilm": MINILM}
    return slugs


def create_key(api: httpx.Client, name: str, scopes: list[str], models: list[str] | None = None) -> str:
    created = api.post("/api/keys", json={"name": name, "scopes": scopes, "models": models})
    assert created.status_code == 201, created.text
    secret: str = created.json()["key"]
    return secret


@pytest.fixture(scope="module")
def keys(api: httpx.Client, models: dict[str, str]) -> dict[str, str]:
    return {
        "admin": ADMIN_KEY,
        "unknown": "tdk_this_key_was_never_issued_0123456789",
        "minilm-only": create_key(api, "inputs minilm only", ["inference"], [MINILM]),
        "management-only": create_key(api, "inputs management only", ["management"]),
    }


@pytest.fixture(scope="module")
def send_bad_request(server: ServerProcess, keys: dict[str, str]) -> Iterator[Callable[[BadRequest], Outcome]]:
    """Send each bad request once, then a normal request, and cache both outcomes."""
    outcomes: dict[str, Outcome] = {}
    with httpx.Client(base_url=server.url, timeout=120) as client:

        def send(case: BadRequest) -> Outcome:
            if case.id not in outcomes:
                headers = {"Content-Type": "application/json"}
                if case.key != "none":
                    headers["Authorization"] = f"Bearer {keys[case.key]}"
                response = client.post(f"/v1/{case.route}", content=case.body, headers=headers)
                after = client.post("/v1/completions", json=NORMAL_REQUEST,
                                    headers={"Authorization": f"Bearer {ADMIN_KEY}"})
                outcomes[case.id] = Outcome(response=response, next_status=after.status_code)
            return outcomes[case.id]

        yield send


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_status(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    outcome = send_bad_request(case)
    assert outcome.response.status_code == case.status, outcome.response.text


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_error_fields(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    assert set(send_bad_request(case).error()) == ERROR_FIELDS


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_error_type(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    assert send_bad_request(case).error()["type"] == ERROR_TYPES[case.status]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_has_message(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    message = send_bad_request(case).error()["message"]
    assert isinstance(message, str) and message.strip()


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_bad_request_is_json(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    assert send_bad_request(case).response.headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("case", PARAM_CASES, ids=lambda case: case.id)
def test_bad_request_names_parameter(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    assert send_bad_request(case).error()["param"] == case.param


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.id)
def test_normal_request_works_after(send_bad_request: Callable[[BadRequest], Outcome], case: BadRequest) -> None:
    assert send_bad_request(case).next_status == 200


def test_missing_key_asks_for_bearer(send_bad_request: Callable[[BadRequest], Outcome]) -> None:
    missing_key = next(case for case in BAD_REQUESTS if case.id == "missing-key")
    assert send_bad_request(missing_key).response.headers["www-authenticate"] == "Bearer"


# Models that are not live ----------------------------------------------------------------------


def copy_model(server: ServerProcess, name: str) -> Path:
    """Copy the T5 demo model into the server's home, where a test may change its files."""
    target = server.home / "models" / name
    shutil.copytree(T5_DIR, target)
    return target


def complete(api: httpx.Client, slug: str) -> httpx.Response:
    return api.post("/v1/completions", json={"model": slug, "prompt": "the 5th of March, 2021"})


def never_deployed(api: httpx.Client, server: ServerProcess) -> httpx.Response:
    return complete(api, register(api, "Inputs Never Deployed", T5_DIR))


def failed(api: httpx.Client, server: ServerProcess) -> httpx.Response:
    directory = copy_model(server, "inputs-failed-t5")
    slug = register(api, "Inputs Failed", directory)
    # Weights cut short after registration: the model server cannot load them.
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert deploy_and_wait(api, slug)["status"] == "failed"
    return complete(api, slug)


def undeployed(api: httpx.Client, server: ServerProcess) -> httpx.Response:
    slug = register_and_deploy(api, "Inputs Undeployed", T5_DIR)
    live_id = api.get(f"/api/models/{slug}").json()["live_deployment_id"]
    job = api.post(f"/api/deployments/{live_id}/undeploy")
    assert wait_for_job(api, job.json()["id"])["status"] == "success"
    return complete(api, slug)


def deploying(api: httpx.Client, server: ServerProcess) -> httpx.Response:
    """Ask for a completion while the model's first deploy is still hashing its files."""
    directory = copy_model(server, "inputs-deploying-t5")
    slug = register(api, "Inputs Deploying", directory)
    padding = directory / "padding.bin"
    with padding.open("wb") as padding_file:
        padding_file.truncate(SPARSE_FILE_BYTES)
    started = api.post(f"/api/models/{slug}/deployments", json={})
    assert started.status_code == 202, started.text
    job_id = started.json()["job"]["id"]
    try:
        return complete(api, slug)
    finally:
        # Cancel before the file shrinks, so that the deploy never goes on to start a
        # replica. The shrink ends the hashing thread, which cancelling cannot stop.
        api.post(f"/api/jobs/{job_id}/cancel")
        os.truncate(padding, 0)
        wait_for_job(api, job_id)


# Each state, and the words that its 503 message must contain.
NOT_LIVE_STATES: dict[str, tuple[Callable[[httpx.Client, ServerProcess], httpx.Response], str]] = {
    "never-deployed": (never_deployed, "never been deployed"),
    "deploying": (deploying, "is deploying"),
    "failed": (failed, "failed"),
    "undeployed": (undeployed, "un-deployed"),
}


@pytest.fixture(scope="module")
def not_live_answers(api: httpx.Client, server: ServerProcess,
                     models: dict[str, str]) -> dict[str, tuple[httpx.Response, int]]:
    """Each state's response to a completion, and the status of a normal request sent right after it."""
    answers = {}
    for state, (ask, _) in NOT_LIVE_STATES.items():
        response = ask(api, server)
        answers[state] = (response, api.post("/v1/completions", json=NORMAL_REQUEST).status_code)
    return answers


@pytest.mark.parametrize("state", sorted(NOT_LIVE_STATES))
def test_not_live_model_is_503(not_live_answers: dict[str, tuple[httpx.Response, int]], state: str) -> None:
    response, _ = not_live_answers[state]
    assert response.status_code == 503, response.text


@pytest.mark.parametrize("state", sorted(NOT_LIVE_STATES))
def test_not_live_message_gives_reason(not_live_answers: dict[str, tuple[httpx.Response, int]], state: str) -> None:
    response, _ = not_live_answers[state]
    assert NOT_LIVE_STATES[state][1] in response.json()["error"]["message"]


@pytest.mark.parametrize("state", sorted(NOT_LIVE_STATES))
def test_not_live_error_fields(not_live_answers: dict[str, tuple[httpx.Response, int]], state: str) -> None:
    response, _ = not_live_answers[state]
    assert set(response.json()["error"]) == ERROR_FIELDS


@pytest.mark.parametrize("state", sorted(NOT_LIVE_STATES))
def test_not_live_code(not_live_answers: dict[str, tuple[httpx.Response, int]], state: str) -> None:
    response, _ = not_live_answers[state]
    assert response.json()["error"]["code"] == "model_not_live"


@pytest.mark.parametrize("state", sorted(NOT_LIVE_STATES))
def test_normal_request_works_after_not_live(not_live_answers: dict[str, tuple[httpx.Response, int]],
                                             state: str) -> None:
    _, next_status = not_live_answers[state]
    assert next_status == 200
