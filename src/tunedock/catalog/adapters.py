"""Inspection of a PEFT LoRA adapter directory against the base model it is registered on.

An adapter is served by merging it into its base at deploy time, so it takes the base
model's format, architecture and context length. Only files are read: adapter_config.json
and the safetensors headers of the adapter and the base, never tensor data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tunedock.catalog import formats
from tunedock.catalog.inspection import (
    ADAPTER_CONFIG_FILE,
    FLOAT32_BYTES,
    ModelInspection,
    _directory_size,
    _load_json_object,
    resolve_model_directory,
)
from tunedock.catalog.safetensors_header import SafetensorsHeaderError, TensorEntry, read_safetensors_header
from tunedock.errors import InvalidModelDirectory

logger = logging.getLogger(__name__)

ADAPTER_SAFETENSORS_FILE = "adapter_model.safetensors"
ADAPTER_PYTORCH_FILE = "adapter_model.bin"
LORA_PEFT_TYPE = "LORA"
# Formats whose models PEFT can load with a task head and merge an adapter into.
MERGEABLE_FORMATS = (formats.CAUSAL_LM, formats.SEQ2SEQ_LM)
# PEFT task_type values and the base model format each one was trained on.
TASK_TYPE_FORMATS = {"CAUSAL_LM": formats.CAUSAL_LM, "SEQ_2_SEQ_LM": formats.SEQ2SEQ_LM}
# PEFT saves LoRA weights as "<prefix><module path>.lora_A.weight" and "...lora_B.weight".
PEFT_KEY_PREFIX = "base_model.model."
LORA_A_SUFFIX = ".lora_A.weight"
LORA_B_SUFFIX = ".lora_B.weight"


def inspect_adapter_directory(path: str | Path, allowed_roots: Sequence[Path], base: ModelInspection,
                              base_name: str) -> ModelInspection:
    """Check that a directory contains a LoRA adapter that fits ``base``, and describe it.

    The result has the base's format, architecture and context length, and the adapter's
    own parameter count, size and weights file. ``base_name`` names the base in messages.
    Raises InvalidModelDirectory whose ``code`` names the failed check.
    """
    directory = resolve_model_directory(path, allowed_roots)
    config = _load_json_object(directory / ADAPTER_CONFIG_FILE, code="config_unreadable")
    _require_lora(directory, config)
    _require_mergeable_base(directory, config, base, base_name)
    weights_file = _find_adapter_weights(directory)
    parameter_count = _count_adapter_parameters(directory, weights_file, base, base_name)

    inspection = replace(base, path=directory, parameter_count=parameter_count,
                         size_bytes=_directory_size(directory), weights_files=(weights_file,))
    logger.info("Inspected adapter directory %s on base %s: format=%s parameters=%d bytes=%d",
                directory, base.path, inspection.format, inspection.parameter_count, inspection.size_bytes)
    return inspection


def _require_lora(directory: Path, config: dict[str, object]) -> None:
    peft_type = config.get("peft_type")
    if peft_type != LORA_PEFT_TYPE:
        raise InvalidModelDirectory(
            f"{directory / ADAPTER_CONFIG_FILE} has peft_type {peft_type!r}, but Tunedock merges only "
            f"LoRA adapters (peft_type {LORA_PEFT_TYPE!r}). Merge this adapter into its base with "
            "PEFT's merge_and_unload() and save_pretrained(), then register the merged directory.",
            code="adapter_type_not_supported", param="path",
        )


def _require_mergeable_base(directory: Path, config: dict[str, object], base: ModelInspection,
                            base_name: str) -> None:
    if base.format not in MERGEABLE_FORMATS:
        raise _incompatible_base(
            f"Base model {base_name} is a {base.format} model, but Tunedock merges adapters only into "
            f"{' and '.join(MERGEABLE_FORMATS)} models. Set base_model to the model the adapter was trained on."
        )
    task_type = config.get("task_type")
    expected_format = TASK_TYPE_FORMATS.get(task_type) if isinstance(task_type, str) else None
    if expected_format is not None and expected_format != base.format:
        raise _incompatible_base(
            f"Adapter {directory} was trained for task_type {task_type} ({expected_format} models), "
            f"but base model {base_name} is a {base.format} model. Set base_model to the model "
            "the adapter was trained on."
        )


def _find_adapter_weights(directory: Path) -> str:
    for name in (ADAPTER_SAFETENSORS_FILE, ADAPTER_PYTORCH_FILE):
        if (directory / name).is_file():
            return name
    raise InvalidModelDirectory(
        f"Adapter directory {directory} contains neither {ADAPTER_SAFETENSORS_FILE} nor "
        f"{ADAPTER_PYTORCH_FILE}. Save the adapter with PEFT's save_pretrained(), then retry.",
        code="weights_missing", param="path",
    )


def _count_adapter_parameters(directory: Path, weights_file: str, base: ModelInspection, base_name: str) -> int:
    path = directory / weights_file
    if weights_file == ADAPTER_PYTORCH_FILE:
        # NOTE: only torch can read a .bin pickle, so the fit to the base is not checked, and
        # the count is an estimate of file size / 4 bytes, as for .bin models.
        return path.stat().st_size // FLOAT32_BYTES

    adapter_tensors = _read_header(path)
    base_tensors = _read_base_headers(base)
    if base_tensors is not None:
        _require_matching_modules(directory, adapter_tensors, base_tensors, base_name)
    return sum(entry.element_count for entry in adapter_tensors)


def _read_header(path: Path) -> list[TensorEntry]:
    try:
        return read_safetensors_header(path)
    except (SafetensorsHeaderError, OSError) as exc:
        raise InvalidModelDirectory(
            f"Weights file {path} is not a readable safetensors file: {exc}. "
            "Save the model again with save_pretrained(), then retry.",
            code="weights_unreadable", param="path",
        ) from exc


def _read_base_headers(base: ModelInspection) -> dict[str, TensorEntry] | None:
    """Return the base's tensors by name, or None when its weights are .bin files."""
    if not all(name.endswith(".safetensors") for name in base.weights_files):
        return None
    return {entry.name: entry for name in base.weights_files for entry in _read_header(base.path / name)}


def _require_matching_modules(directory: Path, adapter_tensors: list[TensorEntry],
                              base_tensors: dict[str, TensorEntry], base_name: str) -> None:
    # lora_A is (rank, in_features) and lora_B is (out_features, rank). The base weight is
    # (out, in) for torch.nn.Linear and (in, out) for GPT-2's Conv1D, so either order fits.
    by_name = {entry.name: entry for entry in adapter_tensors}
    for name, lora_a in by_name.items():
        if not name.endswith(LORA_A_SUFFIX) or len(lora_a.shape) != 2:
            continue
        module = name.removeprefix(PEFT_KEY_PREFIX).removesuffix(LORA_A_SUFFIX)
        lora_b = by_name.get(name.removesuffix(LORA_A_SUFFIX) + LORA_B_SUFFIX)
        base_weight = _find_base_weight(module, base_tensors)
        if base_weight is None:
            raise _incompatible_base(
                f"Adapter {directory} changes module {module}, which base model {base_name} does not "
                "have, so the adapter was trained on another architecture. Set base_model to the "
                "model the adapter was trained on."
            )
        if lora_b is None or len(lora_b.shape) != 2:
            continue
        in_features, out_features = lora_a.shape[1], lora_b.shape[0]
        if base_weight.shape not in ((out_features, in_features), (in_features, out_features)):
            raise _incompatible_base(
                f"Adapter {directory} expects module {module} with {in_features} inputs and "
                f"{out_features} outputs, but base model {base_name} has weight {base_weight.name} of "
                f"shape {list(base_weight.shape)}. Set base_model to the model the adapter was trained on."
            )


def _find_base_weight(module: str, base_tensors: dict[str, TensorEntry]) -> TensorEntry | None:
    # A base saved without its task head lacks the leading "transformer." or "model." of
    # the module path, and one saved with a head may add it, so a suffix match is enough.
    exact = base_tensors.get(f"{module}.weight")
    if exact is not None:
        return exact
    for name, entry in base_tensors.items():
        base_module = name.removesuffix(".weight")
        if name.endswith(".weight") and (module.endswith("." + base_module) or base_module.endswith("." + module)):
            return entry
    return None


def _incompatible_base(message: str) -> InvalidModelDirectory:
    return InvalidModelDirectory(message, code="base_model_incompatible", param="base_model")
