"""Deployment parameter checks against the engine and the device: which quantizations pass."""

from __future__ import annotations

import pytest

from tunedock.deployments.parameters import DeploymentParameters, DeployTarget, check_deployable
from tunedock.errors import InvalidParameters

# A machine with one CUDA device, so that cuda parameters reach the quantization check.
TARGET = DeployTarget(model_name="date-normalizer-gpt2", context_length=1024, cuda_devices=1,
                      model_format="causal-lm")


def transformers_parameters(device: str, quantization: str) -> DeploymentParameters:
    return DeploymentParameters.model_validate({"hardware": {"device": device},
                                                "optimization": {"engine": "transformers",
                                                                 "quantization": quantization}})


def rejection(parameters: DeploymentParameters) -> InvalidParameters:
    with pytest.raises(InvalidParameters) as raised:
        check_deployable(parameters, TARGET)
    return raised.value


@pytest.mark.parametrize(("device", "quantization"), [
    ("cpu", "none"), ("cpu", "float32"), ("cpu", "bfloat16"),
    ("cuda", "none"), ("cuda", "float32"), ("cuda", "float16"), ("cuda:0", "bfloat16"),
])
def test_transformers_accepts_dtype(device: str, quantization: str) -> None:
    check_deployable(transformers_parameters(device, quantization), TARGET)


@pytest.mark.parametrize(("device", "quantization"), [
    ("cpu", "int8"), ("cpu", "float16"), ("cpu", "int8_float32"), ("cuda", "int8_float16"), ("cuda", "awq"),
])
def test_transformers_rejects_quantization(device: str, quantization: str) -> None:
    error = rejection(transformers_parameters(device, quantization))
    assert [problem["field"] for problem in error.details["fields"]] == ["optimization.quantization"]


def test_rejection_names_value_and_choices() -> None:
    error = rejection(transformers_parameters("cpu", "int8"))
    assert ("optimization.quantization 'int8' is not supported by engine 'transformers' on cpu; "
            "use one of ['none', 'float32', 'bfloat16']") in error.message


def test_cuda_rejection_lists_cuda_choices() -> None:
    error = rejection(transformers_parameters("cuda", "int8"))
    assert "use one of ['none', 'float32', 'float16', 'bfloat16']" in error.message


def test_rejection_detail_carries_value() -> None:
    error = rejection(transformers_parameters("cpu", "int8"))
    assert error.details["fields"][0]["value"] == "int8"
