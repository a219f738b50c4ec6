"""The transformers engine: PyTorch models run by transformers, with continuous batching.

Generation does not call ``model.generate``: a step-wise decoding loop
(``continuous_batching`` over ``transformers_batching``) runs many requests in one
batch, each with its own sampling settings, seed, stop strings and token budget. It
honours the model's end-of-sequence tokens and its decoder start token; the other logits
processors that ``generation_config.json`` can ask for are listed in a warning at load
and not applied. Greedy output equals ``model.generate(do_sample=False)`` for models
whose generation config sets none of them.

Embeddings are batched across requests and pooled as the model's sentence-transformers
files declare.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel

from tunedock.runtime.engines.base import ModelFormat
from tunedock.runtime.engines.batching_engine import BatchingEngine, BatchingOptions
from tunedock.runtime.engines.chat_templates import load_chat_template
from tunedock.runtime.engines.continuous_batching import ContinuousBatcher
from tunedock.runtime.engines.pooling import PoolingConfig, pool, read_pooling_config
from tunedock.runtime.engines.tokenization import TransformersTokenizer
from tunedock.runtime.engines.transformers_batching import (CausalStepModel, Seq2SeqStepModel,
                                                            supports_batching)
from tunedock.runtime.engines.transformers_loading import (check_model_directory, context_length,
                                                           load_tokenizer_and_model, resolve_device,
                                                           resolve_dtype)

logger = logging.getLogger(__name__)

# generation_config.json settings that change tokens but that the decoding loop does not apply.
_UNAPPLIED_GENERATION_SETTINGS = {
    "repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "forced_bos_token_id": None, "forced_eos_token_id": None,
    "min_new_tokens": None, "min_length": 0, "encoder_repetition_penalty": 1.0, "sequence_bias": None,
}


class TransformersEngine(BatchingEngine):
    """Serves one causal-lm, seq2seq-lm or embedding model loaded with transformers.

    ``quantization`` is the dtype the weights load in: ``float32``, ``bfloat16``, ``float16``
    (CUDA only), or ``none`` (the default) for the stored dtype, which is float32 on CPU.
    """

    def __init__(self, options: BatchingOptions | None = None, threads: int | None = None,
                 quantization: str | None = None) -> None:
        super().__init__(options or BatchingOptions())
        if threads is not None:
            torch.set_num_threads(threads)
        self._quantization = quantization
        self._model: PreTrainedModel | None = None
        self._device = torch.device("cpu")
        self._pooling = PoolingConfig()
        self._pad_token_id = 0

    def load(self, model_path: Path, model_format: ModelFormat, device: str) -> None:
        self._device = resolve_device(device)
        dtype = resolve_dtype(self._quantization, self._device)
        check_model_directory(model_path)
        if model_format is ModelFormat.EMBEDDING:
            self._pooling = read_pooling_config(model_path)
        tokenizer, self._model = load_tokenizer_and_model(model_path, model_format, self._device, dtype)
        self._tokenizer = TransformersTokenizer(tokenizer)
        self._format = model_format
        self._context_length = context_length(self._model, tokenizer, self._pooling.max_seq_length)
        self._pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if model_format.is_generative:
            self._end_token_ids = _eos_token_ids(self._model, tokenizer)
            self._chat_template = load_chat_template(model_path)
            _warn_unapplied_settings(self._model)
            self._limit_batch_size(self._model)
        logger.info("Model %s (%s) on %s: dtype %s (quantization %s), context length %s tokens, %d threads",
                    type(self._model).__name__, model_format, self._device, _dtype_name(self._model.dtype),
                    self._quantization or "none", self._context_length or "unlimited", torch.get_num_threads())

    def _generation_loop(self) -> Callable[[], None]:
        model = self._loaded_model()
        step_model: Any
        if self.model_format is ModelFormat.SEQ2SEQ_LM:
            step_model = Seq2SeqStepModel(model, self._device, _decoder_start_token_id(model))
        else:
            step_model = CausalStepModel(model, self._device)
        batcher = ContinuousBatcher(step_model, self._queue, self.options.max_batch_size,
                                    self.options.batch_wait_seconds, self.counters)
        return batcher.run

    def _encode_embeddings(self, token_ids: list[list[int]]) -> np.ndarray:
        width = max(len(ids) for ids in token_ids)
        input_ids = torch.tensor([ids + [self._pad_token_id] * (width - len(ids)) for ids in token_ids],
                                 device=self._device)
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in token_ids], device=self._device)
        with torch.inference_mode():
            hidden = self._loaded_model()(input_ids=input_ids, attention_mask=mask).last_hidden_state
        return pool(hidden.float().cpu().numpy(), mask.cpu().numpy(), self._pooling)

    def _limit_batch_size(self, model: PreTrainedModel) -> None:
        if self.options.max_batch_size > 1 and not supports_batching(model):
            logger.warning("The cache of %s is not a plain key-value cache that can be merged; "
                           "decoding one request at a time", type(model).__name__)
            self.options = BatchingOptions(max_batch_size=1, max_queue_size=self.options.max_queue_size,
                                           batch_wait_seconds=self.options.batch_wait_seconds)

    def _loaded_model(self) -> PreTrainedModel:
        if self._model is None:
            raise RuntimeError("TransformersEngine.load() has not been called")
        return self._model


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _eos_token_ids(model: PreTrainedModel, tokenizer: Any) -> frozenset[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return frozenset()
    return frozenset(configured) if isinstance(configured, list) else frozenset({configured})


def _decoder_start_token_id(model: PreTrainedModel) -> int:
    for config in (model.generation_config, model.config):
        start = getattr(config, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    pad = model.config.pad_token_id
    return pad if isinstance(pad, int) else 0


def _warn_unapplied_settings(model: PreTrainedModel) -> None:
    config = model.generation_config
    unapplied = [f"{name}={getattr(config, name)!r}" for name, neutral in _UNAPPLIED_GENERATION_SETTINGS.items()
                 if getattr(config, name, neutral) not in (neutral, None, [])]
    if unapplied:
        logger.warning("generation_config.json sets %s, which the decoding loop does not apply",
                       ", ".join(unapplied))
