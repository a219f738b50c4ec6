"""Deploys through the control plane on each engine, and streaming through the gateway."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, deploy_and_wait
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e

PROMPT = "the 5th of March, 2021"


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def inference(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.fixture(scope="module")
def ct2(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    """The T5 demo model deployed with CTranslate2 int8, then redeployed on the same weights."""
    target = server.home / "models" / "ct2-t5"
    shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
    model = api.post("/api/models", json={"name": "CT2 T5", "path": str(target)}).json()
    body = {"optimization": {"engine": "ctranslate2", "quantization": "int8"}, "generation": {"temperature": 0}}
    first = deploy_and_wait(api, model["slug"], body)
    second = deploy_and_wait(api, model["slug"], body)
    return {"model": model, "first": first, "second": second}


def messages(job: dict[str, Any]) -> list[str]:
    return [event["message"] for event in job["events"]]


def test_ct2_deploy_succeeds(ct2: dict[str, Any]) -> None:
    assert [ct2["first"]["status"], ct2["second"]["status"]] == ["success", "success"]


def test_ct2_conversion_shows_in_job_events(ct2: dict[str, Any]) -> None:
    assert any(message.startswith("Converted to CTranslate2 (int8)") for message in messages(ct2["first"]))


def test_ct2_redeploy_reuses_conversion(ct2: dict[str, Any]) -> None:
    assert any(message.startswith("Reusing the int8 CTranslate2 weights") for message in messages(ct2["second"]))


def test_ct2_answers_correctly(ct2: dict[str, Any], inference: openai.OpenAI) -> None:
    completion = inference.completions.create(model=ct2["model"]["slug"], prompt=PROMPT, max_tokens=16)
    assert completion.choices[0].text == "2021-03-05"


def test_ct2_for_embeddings_is_refused(api: httpx.Client) -> None:
    from tunedock.demo.registry import minilm_model_path

    registered = api.post("/api/models", json={"name": "MiniLM CT2", "path": str(minilm_model_path())})
    response = api.post(f"/api/models/{registered.json()['slug']}/deployments",
                        json={"optimization": {"engine": "ctranslate2"}})
    assert response.json()["error"]["details"]["fields"][0]["field"] == "optimization.engine"


def test_stream_through_gateway_equals_plain_answer(ct2: dict[str, Any], inference: openai.OpenAI) -> None:
    slug = ct2["model"]["slug"]
    plain = inference.completions.create(model=slug, prompt=PROMPT, max_tokens=16).choices[0].text
    pieces = [chunk.choices[0].text for chunk in inference.completions.create(
        model=slug, prompt=PROMPT, max_tokens=16, stream=True) if chunk.choices]
    assert "".join(pieces) == plain


def test_stream_arrives_in_several_chunks(ct2: dict[str, Any], inference: openai.OpenAI) -> None:
    chunks = list(inference.completions.create(model=ct2["model"]["slug"], prompt=PROMPT, max_tokens=16,
                                               stream=True))
    assert len(chunks) > 2


@pytest.fixture(scope="module")
def bfloat16(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    """The T5 demo model deployed on transformers with its weights loaded in bfloat16."""
    target = server.home / "models" / "bf16-t5"
    shutil.copytree(demo_models_root() / "date-normalizer-t5", target)
    model = api.post("/api/models", json={"name": "BF16 T5", "path": str(target)}).json()
    body = {"optimization": {"engine": "transformers", "quantization": "bfloat16"}, "generation": {"temperature": 0}}
    return {"model": model, "job": deploy_and_wait(api, model["slug"], body)}


def test_bfloat16_deploy_succeeds(bfloat16: dict[str, Any]) -> None:
    assert bfloat16["job"]["status"] == "success"


def test_bfloat16_answers_correctly(bfloat16: dict[str, Any], inference: openai.OpenAI) -> None:
    completion = inference.completions.create(model=bfloat16["model"]["slug"], prompt=PROMPT, max_tokens=16)
    assert completion.choices[0].text == "2021-03-05"


def test_int8_on_transformers_is_refused(api: httpx.Client, bfloat16: dict[str, Any]) -> None:
    response = api.post(f"/api/models/{bfloat16['model']['slug']}/deployments",
                        json={"optimization": {"engine": "transformers", "quantization": "int8"}})
    assert response.json()["error"]["details"]["fields"][0]["field"] == "optimization.quantization"
