"""Deployment parameters: the settings a deploy requests, validated field by field.

A parameter that the chosen engine cannot honour is a validation error, never a silent
change, so every deployment row records exactly what it ran.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ENGINES = ("transformers", "ctranslate2", "vllm")
# Engines that this build can run; the others are accepted names that fail validation.
AVAILABLE_ENGINES = ("transformers",)
MAX_STOP_SEQUENCES = 4


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

    @model_validator(mode="after")
    def _replica_range(self) -> Scaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be at least min_replicas ({self.min_replicas})"
            )
        return self


class Hardware(_Section):
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda|cuda:\d+)$")
    threads: int | None = Field(default=None, ge=1, le=256, description="CPU threads per replica.")


class Optimization(_Section):
    engine: Literal["transformers", "ctranslate2", "vllm"] = "transformers"
    quantization: Literal["none"] | None = Field(
        default=None, description="Quantization of the weights; the transformers engine runs them as stored."
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
