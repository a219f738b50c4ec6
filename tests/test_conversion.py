"""Weights preparation for the engines: conversion to CTranslate2 and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_model_server import DEMO_GPT2_PATH, DEMO_T5_PATH, MINILM_PATH
from tunedock.conversion import ConversionFailed, prepare_weights
from tunedock.runtime.engines.converted_weights import MANIFEST_FILE, ConvertedWeights


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """The demo T5 prepared twice with the same quantization: the paths and the progress messages."""
    cache = tmp_path_factory.mktemp("weights-cache")
    messages: list[str] = []
    first = prepare_weights(DEMO_T5_PATH, "seq2seq-lm", "ctranslate2", "int8", cache, messages.append)
    second = prepare_weights(DEMO_T5_PATH, "seq2seq-lm", "ctranslate2", "int8", cache, messages.append)
    return first, second, messages


def test_redeploy_reuses_converted_weights(converted: tuple[Path, Path, list[str]]) -> None:
    first, second, messages = converted
    assert second == first
    assert sum(message.startswith("Converting") for message in messages) == 1
    assert messages[-1].startswith("Reusing")


def test_manifest_records_the_source(converted: tuple[Path, Path, list[str]]) -> None:
    manifest = ConvertedWeights.read(converted[0])
    assert manifest.source_path == str(DEMO_T5_PATH.resolve())
    assert manifest.quantization == "int8"
    assert manifest.end_token_ids == [1]


def test_converted_directory_has_serving_files(converted: tuple[Path, Path, list[str]]) -> None:
    names = {path.name for path in converted[0].iterdir()}
    assert {"model.bin", "tokenizer.json", "generation_config.json", MANIFEST_FILE} <= names


def test_transformers_engine_uses_model_directory(tmp_path: Path) -> None:
    assert prepare_weights(DEMO_GPT2_PATH, "causal-lm", "transformers", "none", tmp_path) == DEMO_GPT2_PATH.resolve()


def test_transformers_engine_rejects_quantization(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="ctranslate2"):
        prepare_weights(DEMO_GPT2_PATH, "causal-lm", "transformers", "int8", tmp_path)


def test_quantization_unsupported_on_cpu_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="int8_float16"):
        prepare_weights(DEMO_GPT2_PATH, "causal-lm", "ctranslate2", "int8_float16", tmp_path)


def test_embedding_model_is_rejected_for_ctranslate2(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed, match="transformers engine"):
        prepare_weights(MINILM_PATH, "embedding", "ctranslate2", "int8", tmp_path)


def test_rejected_request_converts_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConversionFailed):
        prepare_weights(DEMO_GPT2_PATH, "causal-lm", "ctranslate2", "awq", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_conversion_names_the_cause(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ConversionFailed, match="failed"):
        prepare_weights(broken, "causal-lm", "ctranslate2", "int8", tmp_path / "cache")
