"""Loading a Hugging Face model directory with transformers, for the transformers engine.

Every failure becomes ModelLoadFailed with a one-line message for people: the model
server prints it as the last line of stderr, and the control plane shows it as the
deployment's failure reason.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer,
                          PreTrainedModel, PreTrainedTokenizerBase)

from tunedock.runtime.engines.base import ModelFormat, ModelLoadFailed, describe_exception

logger = logging.getLogger(__name__)

# Deploy quantization values that the transformers engine runs, as the dtype the weights load in.
_TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# float16 matmuls on CPU are slow or missing in PyTorch. bfloat16 also runs on CPUs without
# native bfloat16 instructions (AVX512-BF16, AMX), but there it may be slower than float32.
_DEVICE_QUANTIZATIONS = {"cpu": ("none", "float32", "bfloat16"), "cuda": ("none", "float32", "float16", "bfloat16")}

_MODEL_CLASSES = {
    ModelFormat.CAUSAL_LM: AutoModelForCausalLM,
    ModelFormat.SEQ2SEQ_LM: AutoModelForSeq2SeqLM,
    ModelFormat.EMBEDDING: AutoModel,
}
# Tokenizers that declare no length limit report a huge model_max_length (about 1e30).
_MAX_PLAUSIBLE_CONTEXT = 10_000_000


def resolve_device(name: str) -> torch.device:
    """Parse ``name`` as cpu or cuda[:index] and check that this process can use it."""
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ModelLoadFailed(f"device {name!r} is not a valid torch device; use cpu, cuda or cuda:<index>") from error
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ModelLoadFailed(f"device {name!r} is not supported; use cpu, cuda or cuda:<index>")
    if not torch.cuda.is_available():
        raise ModelLoadFailed(
            f"device {name!r} was requested but CUDA is not available in this process "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False); use --device cpu"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise ModelLoadFailed(
            f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA devices"
        )
    return device


def resolve_dtype(quantization: str | None, device: torch.device) -> torch.dtype | str:
    """Return the ``dtype`` argument of ``from_pretrained`` for a deployment's quantization on ``device``.

    ``None`` and ``"none"`` give ``"auto"`` (the stored dtype) on CUDA, and float32 on CPU
    because half-precision weights would run slowly there.
    """
    name = quantization or "none"
    supported = _DEVICE_QUANTIZATIONS[device.type]
    if name not in supported:
        raise ModelLoadFailed(f"quantization {name!r} is not supported by the transformers engine on "
                              f"{device.type}; use one of {', '.join(supported)}")
    if name != "none":
        return _TORCH_DTYPES[name]
    return torch.float32 if device.type == "cpu" else "auto"


def load_tokenizer_and_model(model_path: Path, model_format: ModelFormat, device: torch.device,
                             dtype: torch.dtype | str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel]:
    """Load the tokenizer and the model for ``model_format`` from ``model_path`` onto ``device``.

    ``dtype`` is passed to ``from_pretrained``: a torch dtype, or ``"auto"`` for the stored one.
    """
    model_type = _read_model_type(model_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model, loading_info = _MODEL_CLASSES[model_format].from_pretrained(
            model_path, dtype=dtype, output_loading_info=True)
    except Exception as error:  # Model code and file parsers raise many exception types.
        raise ModelLoadFailed(
            f"could not load {model_path} as a {model_format} model (config.json model_type "
            f"{model_type!r}): {describe_exception(error)}"
        ) from error

    _check_no_missing_weights(model, loading_info["missing_keys"], model_path)
    return tokenizer, model.to(device).eval()


def context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                   max_seq_length: int | None = None) -> int | None:
    """Return the most input tokens the model takes, or None when it has no fixed limit.

    The limit is the smallest of the config's ``max_position_embeddings``, the
    tokenizer's ``model_max_length`` when it is plausible, and ``max_seq_length``.
    Models with relative positions, such as T5, often have none of these.
    """
    limits = [max_seq_length, getattr(model.config, "max_position_embeddings", None)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < _MAX_PLAUSIBLE_CONTEXT:
        limits.append(tokenizer_limit)
    valid = [limit for limit in limits if isinstance(limit, int) and limit > 0]
    return min(valid) if valid else None


def check_model_directory(model_path: Path) -> None:
    """Raise ModelLoadFailed unless ``model_path`` is a directory with a config.json."""
    if not model_path.is_dir():
        raise ModelLoadFailed(f"model directory {model_path} does not exist or is not a directory")
    if not (model_path / "config.json").is_file():
        raise ModelLoadFailed(
            f"{model_path} has no config.json, so it is not a Hugging Face model directory"
        )


def _read_model_type(model_path: Path) -> str | None:
    try:
        config = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadFailed(f"could not read {model_path / 'config.json'}: {error}") from error
    return config.get("model_type") if isinstance(config, dict) else None


def _check_no_missing_weights(model: PreTrainedModel, missing_keys: set[str], model_path: Path) -> None:
    # transformers fills missing tensors with random values and only logs a warning,
    # which would serve a broken model. The pooler of an encoder is the exception:
    # sentence-embedding checkpoints often omit it, and pooling does not use it.
    missing = sorted(key for key in missing_keys if "pooler." not in key)
    if missing:
        raise ModelLoadFailed(
            f"the weights in {model_path} lack {len(missing)} tensors that {type(model).__name__} "
            f"needs, such as {missing[0]!r}; the weights do not match config.json"
        )
