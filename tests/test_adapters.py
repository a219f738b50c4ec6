"""LoRA adapters: registration on a base model, and deploys that merge the adapter into the base."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ADMIN_KEY, ServerProcess, deploy_and_wait
from tunedock.conversion import ConversionFailed, prepare_weights
from tunedock.demo.registry import demo_models_root

pytestmark = pytest.mark.e2e

ADAPTER_DIR_NAME = "date-normalizer-gpt2-dmy-lora"
TRANSFORMERS_DEPLOY = {"generation": {"temperature": 0}}
CTRANSLATE2_DEPLOY = {"optimization": {"engine": "ctranslate2", "quantization": "int8"},
                      "generation": {"temperature": 0}}


def adapter_source() -> Path:
    return demo_models_root() / ADAPTER_DIR_NAME


def first_held_out_row() -> dict[str, str]:
    with (adapter_source() / "held_out.jsonl").open(encoding="utf-8") as rows:
        return json.loads(rows.readline())


def messages(job: dict[str, Any]) -> list[str]:
    return [event["message"] for event in job["events"]]


def copy_model(server: ServerProcess, source: Path, name: str) -> Path:
    target = server.home / "models" / name
    if not target.exists():
        shutil.copytree(source, target)
    return target


@pytest.fixture(scope="module")
def api(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture(scope="module")
def inference(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=ADMIN_KEY, max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def base(api: httpx.Client, server: ServerProcess) -> dict[str, Any]:
    path = copy_model(server, demo_models_root() / "date-normalizer-gpt2", "adapter-base-gpt2")
    response = api.post("/api/models", json={"name": "Adapter Base GPT-2", "path": str(path)})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def adapter_path(server: ServerProcess) -> Path:
    return copy_model(server, adapter_source(), "dmy-lora")


@pytest.fixture(scope="module")
def adapter(api: httpx.Client, base: dict[str, Any], adapter_path: Path) -> dict[str, Any]:
    response = api.post("/api/models", json={"name": "DMY LoRA", "path": str(adapter_path),
                                             "base_model": base["slug"]})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def deploys(api: httpx.Client, adapter: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The adapter deployed twice on the transformers engine."""
    first = deploy_and_wait(api, adapter["slug"], TRANSFORMERS_DEPLOY)
    second = deploy_and_wait(api, adapter["slug"], TRANSFORMERS_DEPLOY)
    return {"first": first, "second": second}


def register_error(api: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/api/models", json=body)
    assert response.status_code == 400, response.text
    return response.json()["error"]


# Registration


def test_adapter_takes_base_format(adapter: dict[str, Any]) -> None:
    assert adapter["format"] == "causal-lm"


def test_adapter_records_base_slug(adapter: dict[str, Any], base: dict[str, Any]) -> None:
    assert adapter["base_model"] == base["slug"]


def test_adapter_technique_is_lora(adapter: dict[str, Any]) -> None:
    assert adapter["technique"] == "lora"


def test_adapter_counts_only_adapter_parameters(adapter: dict[str, Any]) -> None:
    report = json.loads((adapter_source() / "training_report.json").read_text(encoding="utf-8"))
    assert adapter["parameter_count"] == report["parameter_count"]


def test_adapter_base_by_directory_path(api: httpx.Client, base: dict[str, Any], adapter_path: Path) -> None:
    response = api.post("/api/models", json={"name": "DMY LoRA by path", "path": str(adapter_path),
                                             "base_model": base["path"]})
    assert response.json()["base_model"] == base["path"]


def test_adapter_without_base_rejected(api: httpx.Client, adapter_path: Path) -> None:
    error = register_error(api, {"name": "No base", "path": str(adapter_path)})
    assert error["code"] == "base_model_missing"


def test_adapter_without_base_message_says_fix(api: httpx.Client, adapter_path: Path) -> None:
    error = register_error(api, {"name": "No base", "path": str(adapter_path)})
    assert "Set base_model" in error["message"]


def test_adapter_missing_base_rejected(api: httpx.Client, adapter_path: Path) -> None:
    error = register_error(api, {"name": "Missing base", "path": str(adapter_path), "base_model": "no-such-base"})
    assert error["code"] == "base_model_not_found"


def test_adapter_missing_base_message_names_value(api: httpx.Client, adapter_path: Path) -> None:
    error = register_error(api, {"name": "Missing base", "path": str(adapter_path), "base_model": "no-such-base"})
    assert "'no-such-base'" in error["message"]


def test_adapter_on_other_architecture_rejected(api: httpx.Client, server: ServerProcess,
                                                adapter_path: Path) -> None:
    t5 = copy_model(server, demo_models_root() / "date-normalizer-t5", "adapter-wrong-base-t5")
    error = register_error(api, {"name": "Wrong base", "path": str(adapter_path), "base_model": str(t5)})
    assert error["code"] == "base_model_incompatible"


def test_adapter_on_resized_base_rejected(api: httpx.Client, server: ServerProcess, adapter_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    wider = copy_model(server, demo_models_root() / "date-normalizer-gpt2", "adapter-wrong-base-gpt2")
    tensors = load_file(str(wider / "model.safetensors"))
    tensors = {name: value[:, :64] if name.endswith("attn.c_attn.weight") else value for name, value in tensors.items()}
    save_file(tensors, str(wider / "model.safetensors"))
    error = register_error(api, {"name": "Resized base", "path": str(adapter_path), "base_model": str(wider)})
    assert error["code"] == "base_model_incompatible"


def test_non_lora_adapter_rejected(api: httpx.Client, server: ServerProcess, base: dict[str, Any]) -> None:
    ia3 = copy_model(server, adapter_source(), "ia3-adapter")
    config = json.loads((ia3 / "adapter_config.json").read_text(encoding="utf-8"))
    (ia3 / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "IA3"}), encoding="utf-8")
    error = register_error(api, {"name": "IA3", "path": str(ia3), "base_model": base["slug"]})
    assert error["code"] == "adapter_type_not_supported"


def test_adapter_as_base_rejected(api: httpx.Client, adapter: dict[str, Any], adapter_path: Path) -> None:
    error = register_error(api, {"name": "Adapter on adapter", "path": str(adapter_path),
                                 "base_model": adapter["slug"]})
    assert error["code"] == "base_model_incompatible"


# Deploys


def test_prepare_weights_needs_base(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="no base model directory"):
        prepare_weights(adapter_source(), "causal-lm", "transformers", "none", tmp_path)


def test_adapter_deploys(deploys: dict[str, dict[str, Any]]) -> None:
    assert [deploys["first"]["status"], deploys["second"]["status"]] == ["success", "success"]


def test_first_deploy_merges(deploys: dict[str, dict[str, Any]]) -> None:
    assert any(message.startswith("Merged the adapter into the base model") for message in messages(deploys["first"]))


def test_redeploy_reuses_merge(deploys: dict[str, dict[str, Any]]) -> None:
    assert any(message.startswith("Reusing the merge of adapter") for message in messages(deploys["second"]))


def test_adapter_answers_day_month_year(deploys: dict[str, dict[str, Any]], adapter: dict[str, Any],
                                        inference: openai.OpenAI) -> None:
    row = first_held_out_row()
    completion = inference.completions.create(model=adapter["slug"], prompt=f"{row['input']} => ", max_tokens=16)
    assert completion.choices[0].text == row["expected"]


@pytest.fixture(scope="module")
def ctranslate2_deploy(deploys: dict[str, dict[str, Any]], api: httpx.Client,
                       adapter: dict[str, Any]) -> dict[str, Any]:
    """The adapter redeployed on ctranslate2 int8, after the transformers deploys."""
    return deploy_and_wait(api, adapter["slug"], CTRANSLATE2_DEPLOY)


def test_ctranslate2_deploys_adapter(ctranslate2_deploy: dict[str, Any]) -> None:
    assert ctranslate2_deploy["status"] == "success"


def test_ctranslate2_converts_merged_weights(ctranslate2_deploy: dict[str, Any]) -> None:
    assert any(message.startswith("Converted to CTranslate2 (int8)") for message in messages(ctranslate2_deploy))


def test_ctranslate2_answers_day_month_year(ctranslate2_deploy: dict[str, Any], adapter: dict[str, Any],
                                            inference: openai.OpenAI) -> None:
    row = first_held_out_row()
    completion = inference.completions.create(model=adapter["slug"], prompt=f"{row['input']} => ", max_tokens=16)
    assert completion.choices[0].text == row["expected"]
