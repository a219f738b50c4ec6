"""Sentence-embedding pooling as declared by a model's sentence-transformers files.

A sentence-transformers model directory lists its pipeline in ``modules.json``: a
Transformer, then a Pooling module whose ``config.json`` names the pooling modes, and
optionally a Normalize module (L2 normalization). This module reads those files and
applies the same pooling to the Transformer's last hidden state, without depending on
the sentence-transformers package. A directory without ``modules.json`` gets mean
pooling and no normalization.

Pooling runs on numpy arrays, so every engine shares it, including the ctranslate2
engine, which runs without torch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunedock.runtime.engines.base import ModelLoadFailed

logger = logging.getLogger(__name__)

SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")

# Pooling-config keys in the order sentence-transformers concatenates their outputs.
_MODE_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_SUPPORTED_MODES = ("cls", "max", "mean", "mean_sqrt_len", "lasttoken")
# sentence-transformers fills padding with this value before max pooling.
_MAX_POOLING_PAD_VALUE = -1e9


@dataclass(frozen=True, slots=True)
class PoolingConfig:
    """Pooling modes, normalization and maximum input length of a sentence-embedding model."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    max_seq_length: int | None = None


def read_pooling_config(model_path: Path) -> PoolingConfig:
    """Read the pooling of a sentence-transformers directory; raise ModelLoadFailed if unsupported."""
    max_seq_length = _read_max_seq_length(model_path)
    modules_file = model_path / "modules.json"
    if not modules_file.is_file():
        logger.info("No modules.json in %s: using mean pooling without normalization", model_path)
        return PoolingConfig(max_seq_length=max_seq_length)

    modules = _read_json(modules_file)
    if not isinstance(modules, list):
        raise ModelLoadFailed(f"{modules_file} must contain a JSON list of modules")
    modes: tuple[str, ...] = ("mean",)
    normalize = False
    for module in modules:
        kind = _module_kind(module, modules_file)
        if kind == "Pooling":
            modes = _read_pooling_modes(model_path / str(module.get("path", "")) / "config.json")
        normalize = normalize or kind == "Normalize"
    return PoolingConfig(modes=modes, normalize=normalize, max_seq_length=max_seq_length)


def pool(hidden: np.ndarray, attention_mask: np.ndarray, config: PoolingConfig) -> np.ndarray:
    """Pool ``hidden`` (batch, tokens, dim) into float32 (batch, dim x modes), then normalize if declared."""
    hidden = hidden.astype(np.float32, copy=False)
    mask = attention_mask[:, :, None].astype(np.float32)
    parts = [_POOLERS[mode](hidden, mask) for mode in config.modes]
    pooled = np.concatenate(parts, axis=-1)
    if config.normalize:
        # torch.nn.functional.normalize's lower bound on the norm, as sentence-transformers uses it.
        norms = np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        pooled = pooled / norms
    return pooled.astype(np.float32, copy=False)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadFailed(f"could not read {path}: {error}") from error


def _read_max_seq_length(model_path: Path) -> int | None:
    config_file = model_path / "sentence_bert_config.json"
    if not config_file.is_file():
        return None
    value = _read_json(config_file).get("max_seq_length")
    return value if isinstance(value, int) and value > 0 else None


def _module_kind(module: Any, modules_file: Path) -> str:
    # Types are dotted class paths such as "sentence_transformers.models.Pooling".
    kind = str(module.get("type", "")).rsplit(".", 1)[-1] if isinstance(module, dict) else ""
    if kind not in SUPPORTED_MODULES:
        raise ModelLoadFailed(
            f"{modules_file} lists module {module!r}, which the model server does not support; "
            f"supported sentence-transformers modules: {', '.join(SUPPORTED_MODULES)}"
        )
    return kind


def _read_pooling_modes(config_file: Path) -> tuple[str, ...]:
    if not config_file.is_file():
        raise ModelLoadFailed(f"the pooling config {config_file} listed in modules.json is missing")
    config = _read_json(config_file)
    modes = tuple(mode for key, mode in _MODE_KEYS.items() if config.get(key) is True)
    unsupported = [mode for mode in modes if mode not in _SUPPORTED_MODES]
    if unsupported:
        raise ModelLoadFailed(
            f"{config_file} asks for {', '.join(unsupported)} pooling, which the model server "
            f"does not support; supported: {', '.join(_SUPPORTED_MODES)}"
        )
    return modes or ("mean",)


def _pool_cls(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return hidden[:, 0]


def _pool_max(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.where(mask == 0, _MAX_POOLING_PAD_VALUE, hidden).max(axis=1)


def _pool_mean(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)


def _pool_mean_sqrt_len(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (hidden * mask).sum(axis=1) / np.sqrt(np.maximum(mask.sum(axis=1), 1e-9))


def _pool_last_token(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # The highest unmasked position works for left and right padding alike.
    positions = np.arange(hidden.shape[1])[None, :]
    last = (mask[:, :, 0].astype(np.int64) * positions).argmax(axis=1)
    return hidden[np.arange(hidden.shape[0]), last]


_POOLERS = {
    "cls": _pool_cls,
    "max": _pool_max,
    "mean": _pool_mean,
    "mean_sqrt_len": _pool_mean_sqrt_len,
    "lasttoken": _pool_last_token,
}
