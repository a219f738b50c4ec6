"""End to end: a real server process deploys real models and the openai package calls them."""

from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, deploy_and_wait, wait_for_job
from tunedock.demo.registry import demo_models_root, minilm_model_path

pytestmark = pytest.mark.e2e

T5_DIR = demo_models_root() / "date-normalizer-t5"
HELD_OUT_ROWS = 20
MAX_NEW_TOKENS = 16


def cosine(first: list[float], second: list[float]) -> float:
    dot = sum(a * b for a, b in zip(first, second))
    return dot / (math.sqrt(sum(a * a for a in first)) * math.sqrt(sum(b * b for b in second)))


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def inference(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.fixture(scope="module")
def minilm(api: httpx.Client) -> dict[str, Any]:
    model = api.post("/api/models", json={"name": "MiniLM E2E", "path": str(minilm_model_path())}).json()
    job = deploy_and_wait(api, model["slug"])
    assert job["status"] == "success", job
    return model


@pytest.fixture(scope="module")
def t5(api: httpx.Client) -> dict[str, Any]:
    model = api.post("/api/models", json={"name": "Dates T5 E2E", "path": str(T5_DIR)}).json()
    job = deploy_and_wait(api, model["slug"], {"generation": {"temperature": 0, "max_tokens": MAX_NEW_TOKENS}})
    assert job["status"] == "success", job
    return model


def held_out_rows() -> list[dict[str, str]]:
    lines = (T5_DIR / "held_out.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:HELD_OUT_ROWS]]


def direct_greedy_answers(inputs: list[str]) -> list[str]:
    """Generate with the same model loaded by transformers in this process."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(T5_DIR)
    model = AutoModelForSeq2SeqLM.from_pretrained(T5_DIR).eval()
    answers = []
    for text in inputs:
        encoded = tokenizer(text, return_tensors="pt")
        output = model.generate(**encoded, do_sample=False, max_new_tokens=MAX_NEW_TOKENS)
        answers.append(tokenizer.decode(output[0], skip_special_tokens=True))
    return answers


def test_embeddings_rank_similar_sentence_higher(minilm: dict[str, Any], inference: openai.OpenAI) -> None:
    sentences = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    vectors = [item.embedding for item in inference.embeddings.create(model=minilm["slug"], input=sentences).data]
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


def test_embeddings_have_384_dimensions(minilm: dict[str, Any], inference: openai.OpenAI) -> None:
    vector = inference.embeddings.create(model=minilm["slug"], input="A man is eating food.").data[0].embedding
    assert len(vector) == 384


def test_embeddings_have_unit_norm(minilm: dict[str, Any], inference: openai.OpenAI) -> None:
    vector = inference.embeddings.create(model=minilm["slug"], input="A man is eating food.").data[0].embedding
    assert math.isclose(math.sqrt(sum(value * value for value in vector)), 1.0, abs_tol=1e-4)


def test_greedy_answers_match_direct_transformers(t5: dict[str, Any], inference: openai.OpenAI) -> None:
    rows = held_out_rows()
    served = [inference.completions.create(model=t5["slug"], prompt=row["input"], temperature=0,
                                           max_tokens=MAX_NEW_TOKENS).choices[0].text for row in rows]
    assert served == direct_greedy_answers([row["input"] for row in rows])


def test_greedy_answers_are_mostly_right(t5: dict[str, Any], inference: openai.OpenAI) -> None:
    rows = held_out_rows()
    served = [inference.completions.create(model=t5["slug"], prompt=row["input"], temperature=0,
                                           max_tokens=MAX_NEW_TOKENS).choices[0].text for row in rows]
    correct = sum(answer.strip() == row["expected"] for answer, row in zip(served, rows))
    assert correct >= 0.9 * len(rows)


def test_completion_reports_token_usage(t5: dict[str, Any], inference: openai.OpenAI) -> None:
    completion = inference.completions.create(model=t5["slug"], prompt="March 5, 2021", temperature=0,
                                              max_tokens=MAX_NEW_TOKENS)
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


def test_second_deploy_is_version_two(t5: dict[str, Any], api: httpx.Client) -> None:
    job = deploy_and_wait(api, t5["slug"], {"generation": {"temperature": 0, "max_tokens": 12}})
    detail = api.get(f"/api/deployments/{job['deployment_id']}").json()
    assert detail["general"]["name"] == "Dates T5 E2E_v2"


def test_history_lists_both_versions_newest_first(t5: dict[str, Any], api: httpx.Client) -> None:
    names = [item["name"] for item in api.get(f"/api/models/{t5['slug']}/deployments").json()["items"]]
    assert names[:2] == ["Dates T5 E2E_v2", "Dates T5 E2E_v1"]


def test_history_marks_only_newest_live(t5: dict[str, Any], api: httpx.Client) -> None:
    items = api.get(f"/api/models/{t5['slug']}/deployments").json()["items"]
    assert [item["live"] for item in items] == [True, False]


def test_superseded_version_records_system_undeploy(t5: dict[str, Any], api: httpx.Client) -> None:
    first = api.get(f"/api/models/{t5['slug']}/deployments").json()["items"][-1]
    undeployment = api.get(f"/api/deployments/{first['id']}").json()["undeployment"]
    assert undeployment["undeployed_by"] == "system"
    assert undeployment["reason"] == "superseded by Dates T5 E2E_v2"


def test_history_row_has_duration_and_deployer(t5: dict[str, Any], api: httpx.Client) -> None:
    newest = api.get(f"/api/models/{t5['slug']}/deployments").json()["items"][0]
    assert newest["deployed_by"] == "admin"
    assert newest["duration_seconds"] > 0


def test_curl_snippet_returns_200(minilm: dict[str, Any], api: httpx.Client, tmp_path: Path) -> None:
    snippet = api.get(f"/api/models/{minilm['slug']}/endpoint").json()["snippets"]["curl"]
    snippet += ' -s -o /dev/null -w "%{http_code}"'
    result = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, TUNEDOCK_API_KEY=ADMIN_KEY))
    assert result.stdout.strip() == "200", result.stderr


def test_curl_snippet_of_generative_model_returns_200(t5: dict[str, Any], api: httpx.Client) -> None:
    snippet = api.get(f"/api/models/{t5['slug']}/endpoint").json()["snippets"]["curl"]
    snippet += ' -s -o /dev/null -w "%{http_code}"'
    result = subprocess.run(["bash", "-c", snippet], capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, TUNEDOCK_API_KEY=ADMIN_KEY))
    assert result.stdout.strip() == "200", result.stderr


def test_undeployed_model_gets_503_naming_it(minilm: dict[str, Any], api: httpx.Client,
                                             inference: openai.OpenAI) -> None:
    live_id = api.get(f"/api/models/{minilm['slug']}").json()["live_deployment_id"]
    job = api.post(f"/api/deployments/{live_id}/undeploy").json()
    wait_for_job(api, job["id"])
    with pytest.raises(openai.APIStatusError) as caught:
        inference.embeddings.create(model=minilm["slug"], input="hello")
    assert caught.value.status_code == 503
    assert minilm["slug"] in caught.value.message
