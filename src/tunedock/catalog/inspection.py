"""Inspection of a local Hugging Face model directory before it is registered.

Only files are read: nothing here imports torch or transformers, and no tensor is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from tunedock.catalog import formats
from tunedock.catalog.safetensors_header import count_safetensors_parameters
from tunedock.errors import InvalidModelDirectory

logger = logging.getLogger(__name__)

MODEL_ROOTS_SETTING = "TUNEDOCK_MODEL_ROOTS"
CONFIG_FILE = "config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
MODULES_FILE = "modules.json"
DEFAULT_POOLING_MODULE_PATH = "1_Pooling"
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"
PYTORCH_FILE = "pytorch_model.bin"
PYTORCH_INDEX_FILE = "pytorch_model.bin.index.json"
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
FLOAT32_BYTES = 4

_JSON_TYPE_NAMES = {dict: "object", list: "array", str: "string", int: "number",
                    float: "number", bool: "boolean", type(None): "null"}


@dataclass(frozen=True)
class ModelInspection:
    path: Path  # resolved absolute directory
    format: str  # one of formats.CAUSAL_LM, formats.SEQ2SEQ_LM, formats.EMBEDDING
    architecture: str  # e.g. "T5ForConditionalGeneration", or "" when config.json lists none
    model_type: str  # config.json model_type, or "" when absent
    parameter_count: int  # exact from safetensors headers, estimated for .bin weights
    size_bytes: int  # sum of all regular files in the directory tree
    weights_files: tuple[str, ...]  # names relative to path, safetensors preferred
    context_length: int | None  # None for relative position models such as T5
    pooling_mode: str | None  # "mean", "cls" or "max" from a sentence-transformers Pooling module
    normalize: bool  # True when modules.json lists a Normalize module


def inspect_model_directory(path: str | Path, allowed_roots: Sequence[Path]) -> ModelInspection:
    """Check that a directory contains a model Tunedock can serve, and describe it.

    Raises InvalidModelDirectory whose ``code`` names the failed check. Of a path outside
    ``allowed_roots``, only its existence and type are checked, and no file in it is read.
    """
    directory = resolve_model_directory(path, allowed_roots)
    _reject_adapter(directory)
    config = _read_config(directory)

    has_modules = (directory / MODULES_FILE).is_file()
    match = formats.detect_format(config, has_modules)
    if match is None:
        raise _unknown_architecture(directory, config)

    weights_files = _find_weights_files(directory)
    parameter_count = _count_parameters(directory, weights_files)
    _require_tokenizer(directory)
    pooling_mode, normalize = (None, False)
    if match.format == formats.EMBEDDING:
        pooling_mode, normalize = _read_sentence_transformers_modules(directory)

    inspection = ModelInspection(
        path=directory,
        format=match.format,
        architecture=match.architecture,
        model_type=formats.read_model_type(config),
        parameter_count=parameter_count,
        size_bytes=_directory_size(directory),
        weights_files=weights_files,
        context_length=_embedding_max_length(directory, match.format) or _context_length(config)
        or _tokenizer_max_length(directory),
        pooling_mode=pooling_mode,
        normalize=normalize,
    )
    logger.info("Inspected model directory %s: format=%s architecture=%s parameters=%d bytes=%d",
                directory, inspection.format, inspection.architecture,
                inspection.parameter_count, inspection.size_bytes)
    return inspection


def resolve_model_directory(path: str | Path, allowed_roots: Sequence[Path]) -> Path:
    """Resolve ``path`` to an existing directory inside ``allowed_roots``, reading no file in it."""
    requested_path = Path(path).expanduser()
    try:
        exists = requested_path.exists()
    except OSError as exc:
        # Path.exists() returns False for a missing path but raises for an unreadable parent.
        raise InvalidModelDirectory(
            f"Cannot access model path {requested_path}: {exc.strerror}. Check that the user "
            "running the Tunedock server may read it.",
            code="path_missing", param="path",
        ) from exc
    if not exists:
        raise InvalidModelDirectory(
            f"Model directory {requested_path} does not exist. Check the path, which is read on "
            "the machine that runs the Tunedock server.",
            code="path_missing", param="path",
        )
    if not requested_path.is_dir():
        raise InvalidModelDirectory(
            f"Model path {requested_path} is not a directory. Give the directory that contains "
            f"{CONFIG_FILE} and the weights.",
            code="not_a_directory", param="path",
        )

    # Symlinks are resolved first, so a link inside a root cannot reach a directory outside.
    directory = requested_path.resolve()
    roots = [Path(root).expanduser().resolve() for root in allowed_roots]
    if not any(directory.is_relative_to(root) for root in roots):
        raise _outside_model_roots(requested_path, directory, roots)
    return directory


def _outside_model_roots(requested_path: Path, directory: Path, roots: list[Path]) -> InvalidModelDirectory:
    location = str(directory) if directory == requested_path else f"{directory} (resolved from {requested_path})"
    roots_text = ", ".join(str(root) for root in roots) if roots else "none are configured"
    return InvalidModelDirectory(
        f"Model directory {location} is outside the allowed model roots ({roots_text}). "
        f"Move or copy the model into one of them, or add a directory that contains it "
        f"to the {MODEL_ROOTS_SETTING} setting.",
        code="outside_model_roots", param="path",
        details={"model_roots": [str(root) for root in roots]},
    )


def is_adapter_directory(directory: str | Path) -> bool:
    """Return whether a directory is a PEFT adapter, which PEFT marks with adapter_config.json."""
    return (Path(directory) / ADAPTER_CONFIG_FILE).is_file()


def _reject_adapter(directory: Path) -> None:
    if is_adapter_directory(directory):
        raise InvalidModelDirectory(
            f"Model directory {directory} is a PEFT adapter ({ADAPTER_CONFIG_FILE} is present), "
            "not a full model. Register it with base_model set to its registered base model, "
            "and Tunedock will merge the adapter into the base at deploy time.",
            code="adapter_not_supported", param="path",
        )


def _read_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise InvalidModelDirectory(
            f"Model directory {directory} has no {CONFIG_FILE}. Register the directory that "
            f"save_pretrained() wrote, which contains {CONFIG_FILE} next to the weights.",
            code="config_missing", param="path",
        )
    config = _load_json_object(config_path, code="config_unreadable")

    # formats.py reads these two fields, so a wrong type must fail here with a clear message.
    architectures = config.get("architectures")
    if architectures is not None and not _is_list_of_strings(architectures):
        raise _config_field_invalid(config_path, "architectures", architectures, "a list of class names")
    model_type = config.get("model_type")
    if model_type is not None and not isinstance(model_type, str):
        raise _config_field_invalid(config_path, "model_type", model_type, "a string")
    return config


def _config_field_invalid(config_path: Path, field: str, value: Any, expected: str) -> InvalidModelDirectory:
    return InvalidModelDirectory(
        f"{config_path} has {field} = {value!r}, expected {expected}. "
        "Fix the file or save the model again with save_pretrained().",
        code="config_unreadable", param="path",
    )


def _load_json(file: Path, code: str) -> Any:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidModelDirectory(
            f"Cannot read {file}: {exc}. Check that the file is readable and UTF-8 encoded.",
            code=code, param="path",
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidModelDirectory(
            f"{file} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
            "Fix the file or write it again, then retry.",
            code=code, param="path",
        ) from exc


def _load_json_object(file: Path, code: str) -> dict[str, Any]:
    value = _load_json(file, code)
    if not isinstance(value, dict):
        raise InvalidModelDirectory(
            f"{file} contains a JSON {_json_type_name(value)}, expected an object. "
            "Fix the file or write it again, then retry.",
            code=code, param="path",
        )
    return value


def _json_type_name(value: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _is_list_of_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_plain_relative(name: str) -> bool:
    # A lexical check, because Hugging Face cache snapshots link each file to a blob
    # outside the snapshot directory, so resolving the path would reject them.
    relative = PurePath(name)
    return bool(name) and not relative.is_absolute() and ".." not in relative.parts


def _unknown_architecture(directory: Path, config: dict[str, Any]) -> InvalidModelDirectory:
    architectures = formats.list_architectures(config)
    model_type = formats.read_model_type(config)
    if architectures:
        named = f"architectures {', '.join(architectures)} (model_type {model_type!r})"
    else:
        named = f"no architectures and model_type {model_type!r}"
    return InvalidModelDirectory(
        f"{directory / CONFIG_FILE} lists {named}, which matches no format Tunedock serves. "
        f"Supported formats are {formats.describe_formats()}. Register a model of one of these formats.",
        code="unknown_architecture", param="path",
        details={"architectures": architectures, "model_type": model_type},
    )


def _find_weights_files(directory: Path) -> tuple[str, ...]:
    """Return the weights files, safetensors preferred over PyTorch .bin pickles."""
    weights_files = _find_safetensors_files(directory) or _find_pytorch_files(directory)
    if not weights_files:
        raise InvalidModelDirectory(
            f"Model directory {directory} contains no weights: no *.safetensors file, no "
            f"{SAFETENSORS_INDEX_FILE} and no pytorch_model*.bin file. Save the model into "
            "this directory with save_pretrained(), then retry.",
            code="weights_missing", param="path",
        )
    return weights_files


def _find_safetensors_files(directory: Path) -> tuple[str, ...]:
    if (directory / SAFETENSORS_FILE).is_file():
        return (SAFETENSORS_FILE,)
    if (directory / SAFETENSORS_INDEX_FILE).is_file():
        return _read_shard_index(directory, SAFETENSORS_INDEX_FILE)
    return tuple(sorted(file.name for file in directory.glob("*.safetensors") if file.is_file()))


def _find_pytorch_files(directory: Path) -> tuple[str, ...]:
    if (directory / PYTORCH_FILE).is_file():
        return (PYTORCH_FILE,)
    if (directory / PYTORCH_INDEX_FILE).is_file():
        return _read_shard_index(directory, PYTORCH_INDEX_FILE)
    return tuple(sorted(file.name for file in directory.glob("pytorch_model*.bin") if file.is_file()))


def _read_shard_index(directory: Path, index_name: str) -> tuple[str, ...]:
    """Return the shard files that a sharded checkpoint's index maps tensors to."""
    index_path = directory / index_name
    index = _load_json_object(index_path, code="weights_unreadable")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map or not _is_list_of_strings(list(weight_map.values())):
        raise InvalidModelDirectory(
            f"{index_path} has no weight_map object that maps tensor names to shard files. "
            "Save the model again with save_pretrained(), then retry.",
            code="weights_unreadable", param="path",
        )

    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if not _is_plain_relative(shard):
            raise InvalidModelDirectory(
                f"{index_path} names shard {shard!r}, which is not a file name inside the "
                "model directory. Save the model again with save_pretrained(), then retry.",
                code="weights_unreadable", param="path",
            )
        if not (directory / shard).is_file():
            raise InvalidModelDirectory(
                f"{index_path} lists shard {shard}, which is missing from {directory}. "
                "Copy the missing shard into the directory, then retry.",
                code="weights_missing", param="path",
            )
    return tuple(shards)


def _count_parameters(directory: Path, weights_files: tuple[str, ...]) -> int:
    paths = [directory / name for name in weights_files]
    if all(name.endswith(".safetensors") for name in weights_files):
        return count_safetensors_parameters(paths)

    # NOTE: the count of .bin weights is an estimate, file size / 4 bytes. Only torch can
    # read these pickles, and the catalog must not import it. The estimate is right for
    # float32 weights but half the true count for float16 or bfloat16 ones.
    estimate = sum(path.stat().st_size for path in paths) // FLOAT32_BYTES
    logger.warning("Estimated %d parameters for %s from the size of its .bin weights; "
                   "save the model as safetensors for an exact count", estimate, directory)
    return estimate


def _require_tokenizer(directory: Path) -> None:
    for file_set in formats.TOKENIZER_FILE_SETS:
        if all((directory / name).is_file() for name in file_set):
            return
    choices = ", ".join(" with ".join(file_set) for file_set in formats.TOKENIZER_FILE_SETS)
    raise InvalidModelDirectory(
        f"Model directory {directory} contains no tokenizer files (expected one of: {choices}). "
        "Save the tokenizer into the directory with tokenizer.save_pretrained(), then retry.",
        code="tokenizer_missing", param="path",
    )


def _read_sentence_transformers_modules(directory: Path) -> tuple[str | None, bool]:
    """Return the pooling mode and whether embeddings are normalized, from modules.json.

    A directory without modules.json returns (None, False), and the caller chooses the pooling.
    """
    modules_path = directory / MODULES_FILE
    if not modules_path.is_file():
        return None, False
    modules = _load_json(modules_path, code="config_unreadable")
    if not isinstance(modules, list) or not all(isinstance(module, dict) for module in modules):
        raise InvalidModelDirectory(
            f"{modules_path} must be a JSON array of module objects, got a JSON "
            f"{_json_type_name(modules)}. Save the model again with sentence-transformers, then retry.",
            code="config_unreadable", param="path",
        )

    normalize = any(_module_class(module) == formats.NORMALIZE_MODULE_CLASS for module in modules)
    pooling_module = next(
        (module for module in modules if _module_class(module) == formats.POOLING_MODULE_CLASS), None
    )
    if pooling_module is None:
        return None, normalize
    module_path = pooling_module.get("path") or DEFAULT_POOLING_MODULE_PATH
    return _read_pooling_mode(directory, modules_path, module_path), normalize


def _module_class(module: dict[str, Any]) -> str:
    # "sentence_transformers.models.Pooling" -> "Pooling"
    module_type = module.get("type")
    return module_type.rsplit(".", 1)[-1] if isinstance(module_type, str) else ""


def _read_pooling_mode(directory: Path, modules_path: Path, module_path: Any) -> str:
    if not isinstance(module_path, str) or not _is_plain_relative(module_path):
        raise InvalidModelDirectory(
            f"{modules_path} gives the Pooling module path {module_path!r}, which is not a "
            "folder inside the model directory. Fix modules.json, then retry.",
            code="config_unreadable", param="path",
        )
    config_path = directory / module_path / CONFIG_FILE
    if not config_path.is_file():
        raise InvalidModelDirectory(
            f"{modules_path} lists a Pooling module, but {config_path} is missing. Copy the "
            "module's folder from the original sentence-transformers model, then retry.",
            code="config_missing", param="path",
        )

    pooling_config = _load_json_object(config_path, code="config_unreadable")
    enabled = [mode for key, mode in formats.POOLING_MODE_KEYS.items() if pooling_config.get(key) is True]
    unsupported = [key for key in formats.UNSUPPORTED_POOLING_MODE_KEYS if pooling_config.get(key) is True]
    if unsupported or len(enabled) != 1:
        raise InvalidModelDirectory(
            f"{config_path} enables pooling {', '.join(enabled + unsupported) or 'none'}, but "
            "Tunedock supports exactly one of mean, cls or max pooling. Register a model "
            "that uses one of them.",
            code="pooling_not_supported", param="path",
        )
    return enabled[0]


def _context_length(config: dict[str, Any]) -> int | None:
    for key in CONTEXT_LENGTH_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _embedding_max_length(directory: Path, model_format: str) -> int | None:
    """Read a sentence-transformers model's ``max_seq_length``, which the model server applies to inputs."""
    if model_format != formats.EMBEDDING:
        return None
    try:
        value = json.loads((directory / "sentence_bert_config.json").read_text(encoding="utf-8")).get(
            "max_seq_length")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _tokenizer_max_length(directory: Path) -> int | None:
    """Read ``model_max_length`` from tokenizer_config.json, for models whose config has no limit (T5)."""
    try:
        value = json.loads((directory / "tokenizer_config.json").read_text(encoding="utf-8")).get("model_max_length")
    except (OSError, ValueError, AttributeError):
        return None
    # Tokenizers without a limit store a huge placeholder such as 10**30.
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 1_000_000:
        return value
    return None


def _directory_size(directory: Path) -> int:
    # A symlinked file counts with its target's size, as in the Hugging Face cache layout.
    # os.walk does not follow symlinked folders, so a link loop cannot recurse forever.
    total = 0
    for folder, _subfolders, names in os.walk(directory):
        for name in names:
            try:
                file_stat = os.stat(os.path.join(folder, name))
            except OSError:
                continue  # a dangling symlink has no size
            if stat.S_ISREG(file_stat.st_mode):
                total += file_stat.st_size
    return total
