"""The transformers engine: one model run with ``generate`` or a forward pass, one request at a time.

Generation calls ``model.generate`` with the model's own generation_config, overriding
only the request's sampling settings, ``max_new_tokens`` and stop strings. A greedy
request therefore produces the same tokens as
``model.generate(**inputs, do_sample=False, max_new_tokens=N)``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jinja2 import TemplateError
from transformers import BatchEncoding, PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList

from tunedock.errors import InvalidInput
from tunedock.runtime.engines.base import (ChatMessage, Embeddings, Engine, FinishReason, Generation,
                                           GenerationParams, ModelFormat)
from tunedock.runtime.engines.chat_prompt import render_plain_chat_prompt
from tunedock.runtime.engines.pooling import PoolingConfig, pool, read_pooling_config
from tunedock.runtime.engines.stop_strings import StopStringCriteria, cut_at_stop_string
from tunedock.runtime.engines.transformers_loading import (check_model_directory, context_length,
                                                           load_tokenizer_and_model, resolve_device)

logger = logging.getLogger(__name__)

EMBEDDING_BATCH_SIZE = 32


class TransformersEngine(Engine):
    """Serves one causal-lm, seq2seq-lm or embedding model loaded with transformers."""

    def __init__(self, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self._format: ModelFormat | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._model: PreTrainedModel | None = None
        self._device = torch.device("cpu")
        self._context_length: int | None = None
        self._pooling = PoolingConfig()
        self._eos_token_ids: frozenset[int] = frozenset()

    @property
    def model_format(self) -> ModelFormat:
        if self._format is None:
            raise RuntimeError("TransformersEngine.load() has not been called")
        return self._format

    def load(self, model_path: Path, model_format: ModelFormat, device: str) -> None:
        self._device = resolve_device(device)
        check_model_directory(model_path)
        if model_format is ModelFormat.EMBEDDING:
            self._pooling = read_pooling_config(model_path)
        self._tokenizer, self._model = load_tokenizer_and_model(model_path, model_format, self._device)
        self._format = model_format
        self._context_length = context_length(self._model, self._tokenizer, self._pooling.max_seq_length)
        if model_format.is_generative:
            self._eos_token_ids = _eos_token_ids(self._model, self._tokenizer)
        logger.info("Model %s (%s) on %s: context length %s tokens, %d threads",
                    type(self._model).__name__, model_format, self._device,
                    self._context_length or "unlimited", torch.get_num_threads())

    def complete(self, prompt: str, params: GenerationParams) -> Generation:
        inputs = self._loaded_tokenizer()(prompt, return_tensors="pt")
        return self._generate(inputs, params, prompt_param="prompt")

    def chat(self, messages: Sequence[ChatMessage], params: GenerationParams) -> Generation:
        return self._generate(self._encode_chat(messages), params, prompt_param="messages")

    def embed(self, inputs: Sequence[str]) -> Embeddings:
        tokenizer = self._loaded_tokenizer()
        lengths = [len(ids) for ids in tokenizer(list(inputs))["input_ids"]]
        for index, length in enumerate(lengths):
            self._check_input_length(length, f"input[{index}]", param="input")

        # Batches of similar length waste less compute on padding.
        order = sorted(range(len(inputs)), key=lengths.__getitem__)
        rows: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(inputs)
        for start in range(0, len(order), EMBEDDING_BATCH_SIZE):
            batch_indices = order[start:start + EMBEDDING_BATCH_SIZE]
            vectors = self._embed_batch([inputs[index] for index in batch_indices])
            for index, vector in zip(batch_indices, vectors, strict=True):
                rows[index] = vector
        return Embeddings(vectors=np.stack(rows), prompt_tokens=sum(lengths))

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        batch = self._loaded_tokenizer()(texts, padding=True, return_tensors="pt").to(self._device)
        with torch.inference_mode():
            hidden = self._loaded_model()(**batch).last_hidden_state
            pooled = pool(hidden, batch["attention_mask"], self._pooling)
        return pooled.float().cpu().numpy()

    def _encode_chat(self, messages: Sequence[ChatMessage]) -> BatchEncoding:
        tokenizer = self._loaded_tokenizer()
        if not tokenizer.chat_template:
            return tokenizer(render_plain_chat_prompt(messages), return_tensors="pt")

        conversation = [{"role": message.role, "content": message.content} for message in messages]
        try:
            # sanitize_control_tokens encodes special tokens typed inside messages as
            # plain text, so a message cannot forge a turn boundary.
            return tokenizer.apply_chat_template(
                conversation, add_generation_prompt=True, tokenize=True, return_dict=True,
                return_tensors="pt", sanitize_control_tokens=True)
        except TemplateError as error:
            raise InvalidInput(f"The model's chat template rejected the messages: {error}",
                               param="messages", code="invalid_messages") from error

    def _generate(self, inputs: BatchEncoding, params: GenerationParams, prompt_param: str) -> Generation:
        prompt_tokens = int(inputs["input_ids"].shape[1])
        max_new_tokens = self._max_new_tokens(prompt_tokens, params, prompt_param)
        # generate() returns the prompt before a causal model's new tokens, and the
        # decoder start token before a seq2seq model's.
        generated_from = prompt_tokens if self._format is ModelFormat.CAUSAL_LM else 1
        options = self._generate_options(params, max_new_tokens, generated_from)

        _seed_sampling(params)
        with torch.inference_mode():
            output = self._loaded_model().generate(**inputs.to(self._device), **options)
        new_tokens = output[0, generated_from:].tolist()
        return self._finish(new_tokens, params, prompt_tokens, max_new_tokens)

    def _max_new_tokens(self, prompt_tokens: int, params: GenerationParams, prompt_param: str) -> int:
        if prompt_tokens == 0:
            raise InvalidInput(f"The {prompt_param} encodes to zero tokens; send some text.",
                               param=prompt_param, code="invalid_value")
        self._check_input_length(prompt_tokens, f"The {prompt_param}", param=prompt_param)
        limit = self._context_length
        # Only a causal model's new tokens share the context with the prompt.
        if limit is None or self._format is not ModelFormat.CAUSAL_LM:
            return params.max_tokens

        room = limit - prompt_tokens
        if room <= 0:
            raise InvalidInput(
                f"The {prompt_param} is {prompt_tokens} tokens long, which fills the model's context "
                f"length of {limit} tokens and leaves no room for the completion. Shorten the {prompt_param}.",
                param=prompt_param, code="context_length_exceeded")
        if params.max_tokens <= room or not params.max_tokens_requested:
            return min(params.max_tokens, room)
        raise InvalidInput(
            f"max_tokens is {params.max_tokens}, but the {prompt_tokens}-token {prompt_param} leaves room "
            f"for only {room} tokens in the model's context length of {limit} tokens. "
            f"Set max_tokens to {room} or less, or shorten the {prompt_param}.",
            param="max_tokens", code="context_length_exceeded")

    def _check_input_length(self, tokens: int, subject: str, param: str) -> None:
        limit = self._context_length
        if limit is not None and tokens > limit:
            raise InvalidInput(
                f"{subject} is {tokens} tokens long, over the model's context length of {limit} "
                f"tokens. Shorten it to {limit} tokens or less.",
                param=param, code="context_length_exceeded")

    def _generate_options(self, params: GenerationParams, max_new_tokens: int,
                          generated_from: int) -> dict[str, Any]:
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        if params.greedy:
            options["do_sample"] = False
        else:
            options.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                           top_k=params.top_k)
        if params.stop:
            criteria = StopStringCriteria(self._loaded_tokenizer(), params.stop, generated_from)
            options["stopping_criteria"] = StoppingCriteriaList([criteria])
        # Without a pad token generate() picks the EOS token itself and logs a warning per call.
        if self._loaded_model().generation_config.pad_token_id is None and self._eos_token_ids:
            options["pad_token_id"] = min(self._eos_token_ids)
        return options

    def _finish(self, new_tokens: list[int], params: GenerationParams, prompt_tokens: int,
                max_new_tokens: int) -> Generation:
        text = self._loaded_tokenizer().decode(new_tokens, skip_special_tokens=True)
        text, found_stop = cut_at_stop_string(text, params.stop)
        ended_by_model = bool(new_tokens) and new_tokens[-1] in self._eos_token_ids
        # A generation shorter than max_new_tokens was ended by some stopping rule.
        stopped = found_stop or ended_by_model or len(new_tokens) < max_new_tokens
        finish_reason: FinishReason = "stop" if stopped else "length"
        return Generation(text=text, finish_reason=finish_reason, prompt_tokens=prompt_tokens,
                          completion_tokens=len(new_tokens))

    def _loaded_tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            raise RuntimeError("TransformersEngine.load() has not been called")
        return self._tokenizer

    def _loaded_model(self) -> PreTrainedModel:
        if self._model is None:
            raise RuntimeError("TransformersEngine.load() has not been called")
        return self._model


def _eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    if configured is None:
        return frozenset()
    return frozenset(configured) if isinstance(configured, list) else frozenset({configured})


def _seed_sampling(params: GenerationParams) -> None:
    if params.greedy:
        return
    # A fresh random seed keeps one seeded request from making later ones predictable.
    if params.seed is None:
        torch.seed()
    else:
        torch.manual_seed(params.seed)
