"""Deployment parameters: the settings a deploy requests, validated field by field.

A parameter that the chosen engine cannot honour is a validation error, never a silent
change, so every deployment row records exactly what it ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tunedock.conversion.weights import TRANSFORMERS_QUANTIZATIONS
from tunedock.errors import InvalidParameters

ENGINES = ("transformers", "ctranslate2", "vllm")
# Engines that this build can run; the others are accepted names that fail validation.
AVAILABLE_ENGINES = ("transformers", "ctranslate2")
MAX_STOP_SEQUENCES = 4
QUANTIZATIONS = ("none", "int8", "int8_float32", "int16", "float32", "int8_float16", "float16", "bfloat16", "awq",
                 "gptq")
# What each available engine runs, by device type: its weights are never changed silently.
# "none" keeps the stored precision, except that transformers on CPU loads float32. The
# other transformers values are the torch dtype the weights load in. Not every CPU or GPU
# runs every ctranslate2 type (int16 or bfloat16, say), so the conversion at deploy time
# checks this machine again.
SUPPORTED_QUANTIZATION: dict[str, dict[str, tuple[str, ...]]] = {
    "transformers": TRANSFORMERS_QUANTIZATIONS,
    "ctranslate2": {"cpu": ("none", "int8", "int8_float32", "int16", "float32"),
                    "cuda": ("none", "int8", "int8_float32", "int8_float16", "float16", "bfloat16", "float32")},
}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationDefaults(_Section):
    """Defaults for inference requests that do not set these fields themselves."""

    temperature: float = Field(default=1.0, ge=0, le=2, description="0 means greedy decoding.")
    max_tokens: int = Field(default=256, ge=1, description="Upper bound of generated tokens.")
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=1, le=100, description="null turns top-k off.")
    stop: list[str] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: list[str]) -> list[str]:
        if any(sequence == "" for sequence in value):
            raise ValueError("stop sequences must not be empty strings")
        return value


class Scaling(_Section):
    max_batch_size: int = Field(default=8, ge=1, le=256)
    min_replicas: int = Field(default=1, ge=1, le=10)
    max_replicas: int = Field(default=1, ge=1, le=50)
    scale_up_delay: float = Field(default=30, ge=0, description="Seconds of high load before adding a replica.")
    scale_down_delay: float = Field(default=300, ge=0, description="Seconds of low load before removing one.")
    idle_undeploy_after: float | None = Field(
        default=None, gt=0, description="Seconds without requests before an automatic un-deploy; null is off."
    )

    @field_validator("max_replicas")
    @classmethod
    def _replica_range(cls, value: int, info: ValidationInfo) -> int:
        minimum = info.data.get("min_replicas")
        if minimum is not None and value < minimum:
            raise ValueError(f"max_replicas ({value}) must be at least min_replicas ({minimum})")
        return value


class Hardware(_Section):
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda|cuda:\d+)$")
    threads: int | None = Field(default=None, ge=1, le=256, description="CPU threads per replica.")


class Optimization(_Section):
    engine: Literal["transformers", "ctranslate2", "vllm"] = "transformers"
    quantization: Literal["none", "int8", "int8_float32", "int16", "float32", "int8_float16", "float16", "bfloat16",
                          "awq", "gptq"] = Field(
        default="none", description="Quantization of the weights; `none` runs them as stored, except that the "
        "transformers engine on CPU loads them as float32. The transformers engine also loads them as float32 or "
        "bfloat16, and on CUDA as float16. bfloat16 halves the memory of float32 weights, and on a CPU without "
        "native bfloat16 support it may run slower than float32. The ctranslate2 engine converts them at deploy "
        "time."
    )

    @field_validator("engine")
    @classmethod
    def _engine_available(cls, value: str) -> str:
        if value not in AVAILABLE_ENGINES:
            raise ValueError(
                f"engine {value!r} is not available in this build; use one of {list(AVAILABLE_ENGINES)}"
            )
        return value


class DeploymentParameters(_Section):
    generation: GenerationDefaults = Field(default_factory=GenerationDefaults)
    scaling: Scaling = Field(default_factory=Scaling)
    hardware: Hardware = Field(default_factory=Hardware)
    optimization: Optimization = Field(default_factory=Optimization)


@dataclass(frozen=True)
class DeployTarget:
    """The model and machine facts that a deploy's parameters are checked against."""

    model_name: str
    context_length: int | None
    cuda_devices: int
    model_format: str = ""
    # Quantizations that this machine's hardware runs, per engine and device type, when known.
    machine_types: dict[tuple[str, str], tuple[str, ...]] | None = None
    min_idle_undeploy_after: float = 0.0


def resolve_defaults(parameters: DeploymentParameters, target: DeployTarget) -> DeploymentParameters:
    """Fit defaults the caller did not set to the model, e.g. max_tokens to a short context."""
    generation = parameters.generation
    context = target.context_length
    if "max_tokens" not in generation.model_fields_set and context is not None and generation.max_tokens > context:
        fitted = generation.model_copy(update={"max_tokens": context})
        return parameters.model_copy(update={"generation": fitted})
    return parameters


def check_deployable(parameters: DeploymentParameters, target: DeployTarget) -> None:
    """Raise InvalidParameters listing every parameter the model or machine cannot honour."""
    problems: list[dict[str, Any]] = []
    max_tokens = parameters.generation.max_tokens
    if target.context_length is not None and max_tokens > target.context_length:
        problems.append(_problem(
            "generation.max_tokens", max_tokens,
            f"must be at most the context length of {target.model_name} ({target.context_length})"))
    device = parameters.hardware.device
    device_type, _, index = device.partition(":")
    if device_type == "cuda":
        wanted = int(index) if index else 0
        if wanted >= target.cuda_devices:
            problems.append(_problem(
                "hardware.device", device,
                f"is not available: this machine has {target.cuda_devices} CUDA device(s); use 'cpu'"
                + (f" or 'cuda:0' to 'cuda:{target.cuda_devices - 1}'" if target.cuda_devices else "")))
    engine = parameters.optimization.engine
    if engine == "ctranslate2" and target.model_format == "embedding":
        problems.append(_problem("optimization.engine", engine,
                                 "does not run embedding models; use 'transformers'"))
    supported = SUPPORTED_QUANTIZATION.get(engine, {}).get(device_type, ())
    quantization = parameters.optimization.quantization
    runnable = (target.machine_types or {}).get((engine, device_type))
    if quantization in supported and quantization != "none" and runnable is not None and quantization not in runnable:
        problems.append(_problem(
            "optimization.quantization", quantization,
            f"is not supported by this machine's {device_type} for engine {engine!r}; use one of "
            f"{['none', *sorted(runnable)]}"))
    idle = parameters.scaling.idle_undeploy_after
    if idle is not None and idle < target.min_idle_undeploy_after:
        problems.append(_problem(
            "scaling.idle_undeploy_after", idle,
            f"must be at least {target.min_idle_undeploy_after:g} seconds (TUNEDOCK_MIN_IDLE_UNDEPLOY_AFTER), "
            "or null to keep the deployment up"))
    if quantization not in supported:
        problems.append(_problem(
            "optimization.quantization", quantization,
            f"is not supported by engine {engine!r} on {device_type}; use one of {list(supported)}"))
    if problems:
        summary = "; ".join(f"{item['field']} {item['value']!r} {item['message']}" for item in problems)
        raise InvalidParameters(f"Invalid deployment parameters: {summary}.", details={"fields": problems})


def _problem(field: str, value: object, message: str) -> dict[str, Any]:
    return {"field": field, "message": message, "value": value}
