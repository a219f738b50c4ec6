"""The ctranslate2 engine: models converted to CTranslate2, served without torch or transformers.

The engine loads a directory that ``tunedock.conversion`` prepared: CTranslate2 weights
(quantized or not), the tokenizer files and ``tunedock_weights.json``. This process
imports only ``ctranslate2``, ``tokenizers`` and numpy for the model work.

Batching: the worker takes up to ``max_batch_size`` waiting requests (an idle worker
waits ``batch_wait_seconds`` for company) and runs them in one ``generate_batch`` (causal
models) or ``translate_batch`` (seq2seq models) call. CTranslate2 applies one set of
sampling settings per call. The requests taken together are therefore split into groups
with equal temperature, top-k and top-p, and each group is one call. Greedy requests
always share one group. A per-token callback feeds each token to the request's ``SequenceOutput``,
which streams its text and applies stop strings and the token budget; the callback
stops a row as soon as that row is finished or its client went away, so a row never
waits for the longest one in its call. Requests that arrive while a call runs wait for
the next one: CTranslate2 cannot add rows to a running call.

Seeds: CTranslate2's own sampling takes no seed per call (``ctranslate2.set_random_seed``
applies to the whole process), so it cannot repeat one request's seed. A sampled request
with a ``seed`` therefore runs alone, and the engine draws each token with numpy
(``numpy_sampling``, the transformers engine's filters) from a generator seeded by the
request, over the logits that CTranslate2 returns at each step. The call that computes
those logits decodes greedily. While the drawn token equals CTranslate2's greedy token,
the call goes on. At the first token that differs, the callback stops the call, and the
next call starts from the tokens drawn so far, as a longer prompt for causal models or a
target prefix for seq2seq models. The requests taken with it therefore cannot change its
text. NOTE: each new call computes the prompt and the drawn tokens again, so a request
whose draws often differ from the greedy token costs time up to quadratic in its length.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunedock.runtime.engines.base import ModelFormat, ModelLoadFailed, describe_exception
from tunedock.runtime.engines.batching_engine import BatchingEngine, BatchingOptions
from tunedock.runtime.engines.chat_templates import load_chat_template
from tunedock.runtime.engines.converted_weights import ConvertedWeights
from tunedock.runtime.engines.numpy_sampling import sample_token
from tunedock.runtime.engines.sequences import SequenceOutput
from tunedock.runtime.engines.tokenization import FastTokenizer

logger = logging.getLogger(__name__)

GREEDY = (1, 1.0, 1.0)


class CTranslate2Engine(BatchingEngine):
    """Serves one causal-lm or seq2seq-lm model converted to CTranslate2."""

    def __init__(self, options: BatchingOptions | None = None, threads: int | None = None,
                 compute_type: str | None = None) -> None:
        super().__init__(options or BatchingOptions())
        self._threads = threads
        self._compute_type = compute_type
        self._model: Any = None
        self._manifest: ConvertedWeights | None = None

    def load(self, model_path: Path, model_format: ModelFormat, device: str) -> None:
        import ctranslate2

        if not model_format.is_generative:
            raise ModelLoadFailed("the ctranslate2 engine serves causal-lm and seq2seq-lm models; "
                                  "serve embedding models with the transformers engine")
        manifest = ConvertedWeights.read(model_path)
        if manifest.model_format != model_format.value:
            raise ModelLoadFailed(f"{model_path} was converted as a {manifest.model_format} model, "
                                  f"not {model_format.value}")
        device_type, _, index = device.partition(":")
        compute_type = self._compute_type or manifest.quantization
        options = {"device": device_type, "device_index": int(index or 0),
                   "compute_type": "default" if compute_type == "none" else compute_type,
                   "intra_threads": self._threads or 0}
        model_class = ctranslate2.Generator if model_format is ModelFormat.CAUSAL_LM else ctranslate2.Translator
        try:
            self._model = model_class(str(model_path), **options)
        except (RuntimeError, ValueError) as error:
            raise ModelLoadFailed(f"ctranslate2 could not load {model_path} on {device} with compute type "
                                  f"{compute_type}: {describe_exception(error)}") from error
        self._manifest = manifest
        self._tokenizer = FastTokenizer(model_path)
        self._format = model_format
        self._context_length = manifest.context_length
        self._end_token_ids = frozenset(manifest.end_token_ids)
        self._chat_template = load_chat_template(model_path)
        logger.info("Model %s (%s) with ctranslate2 %s on %s: compute type %s, context length %s tokens",
                    manifest.model_type, model_format, ctranslate2.__version__, device, self._model.compute_type,
                    manifest.context_length or "unlimited")

    def stop(self) -> None:
        super().stop()
        # Freed here, on the stopping thread: CTranslate2 aborts the process when a model is
        # destroyed late in interpreter shutdown, as a leftover reference would be.
        self._model = None

    def _generation_loop(self) -> Callable[[], None]:
        return self._run

    def _encode_embeddings(self, token_ids: list[list[int]]) -> np.ndarray:
        raise NotImplementedError("the ctranslate2 engine does not serve embedding models")

    def _run(self) -> None:
        while (taken := self._queue.take(self.options.max_batch_size, wait=True,
                                         gather_seconds=self.options.batch_wait_seconds)) is not None:
            live = [sequence for sequence in taken if not self._skip_cancelled(sequence)]
            for group in _sampling_groups(live):
                self._run_group(group)
            self.counters.running = 0
        for sequence in self._queue.close():
            sequence.abandon()

    def _skip_cancelled(self, sequence: SequenceOutput) -> bool:
        if sequence.cancelled:
            sequence.abandon()
            self.counters.outcomes["cancelled"] += 1
        return sequence.cancelled

    def _run_group(self, group: list[SequenceOutput]) -> None:
        self.counters.running = len(group)
        self.counters.batches += 1
        self.counters.largest_batch = max(self.counters.largest_batch, len(group))
        try:
            if group[0].prepared.params.seed is not None and not group[0].prepared.params.greedy:
                self._sample_seeded(group[0])
            else:
                self._generate(group)
        except Exception as error:  # A model error fails these requests, not the worker.
            logger.exception("ctranslate2 generation of %d requests failed", len(group))
            for sequence in group:
                if not sequence.finished:
                    sequence.fail(error)
                    self.counters.outcomes["failed"] += 1
            return
        for sequence in group:
            self._close(sequence)

    def _generate(self, group: list[SequenceOutput]) -> None:
        prompts = [self._token_strings(sequence.prepared.prompt_ids) for sequence in group]
        top_k, top_p, temperature = _sampling_key(group[0])
        max_new_tokens = max(sequence.prepared.max_new_tokens for sequence in group)
        steps = {"decoding_steps": 0}

        def on_token(step: Any) -> bool:
            sequence = group[step.batch_id]
            if step.batch_id == 0:
                steps["decoding_steps"] += 1
            if sequence.done:
                return True
            self.counters.generated_tokens += 1
            return sequence.add(step.token_id) or sequence.cancelled

        options = {"sampling_topk": top_k, "sampling_topp": top_p, "sampling_temperature": temperature,
                   "end_token": sorted(self._end_token_ids) or None, "callback": on_token}
        if self._format is ModelFormat.CAUSAL_LM:
            self._model.generate_batch(prompts, max_length=max_new_tokens, include_prompt_in_result=False,
                                       beam_size=1, **options)
        else:
            self._model.translate_batch(prompts, max_decoding_length=max_new_tokens, beam_size=1,
                                        max_input_length=0, **options)
        self.counters.decoding_steps += steps["decoding_steps"]

    def _sample_seeded(self, sequence: SequenceOutput) -> None:
        rng = np.random.default_rng(sequence.prepared.params.seed % 2**64)
        while not sequence.done:
            if self._continue_seeded(sequence, rng) == 0:
                # CTranslate2 ended the call without a step, so _close() ends the request at a length limit.
                return

    def _continue_seeded(self, sequence: SequenceOutput, rng: np.random.Generator) -> int:
        """Draw the next tokens of ``sequence`` in one greedy call and return how many it drew.

        The call stops after the first drawn token that differs from CTranslate2's greedy
        token, because CTranslate2 would feed its own token to the next step.
        """
        params = sequence.prepared.params
        drawn = self._token_strings(sequence.token_ids)
        # The translator decodes the target prefix again as its first steps, and counts them in its length.
        replayed = len(drawn) if self._format is ModelFormat.SEQ2SEQ_LM else 0
        remaining = sequence.prepared.max_new_tokens - len(sequence.token_ids)
        count = {"drawn": 0}

        def on_step(step: Any) -> bool:
            if step.step < replayed:
                return False
            if sequence.done:
                return True
            token = sample_token(_host_row(step.logits), params, rng)
            count["drawn"] += 1
            self.counters.decoding_steps += 1
            self.counters.generated_tokens += 1
            return sequence.add(token) or sequence.cancelled or token != step.token_id

        # A minimum length of 0 keeps the end token's logit, which translate_batch's default of 1 masks at step 0.
        options = {"beam_size": 1, "sampling_topk": 1, "return_logits_vocab": True,
                   "end_token": sorted(self._end_token_ids) or None, "callback": on_step}
        if self._format is ModelFormat.CAUSAL_LM:
            prompt = self._token_strings(sequence.prepared.prompt_ids) + drawn
            self._model.generate_batch([prompt], max_length=remaining, min_length=0,
                                       include_prompt_in_result=False, **options)
        else:
            source = self._token_strings(sequence.prepared.prompt_ids)
            self._model.translate_batch([source], target_prefix=[drawn] if drawn else None,
                                        max_decoding_length=replayed + remaining, min_decoding_length=0,
                                        max_input_length=0, **options)
        return count["drawn"]

    def _close(self, sequence: SequenceOutput) -> None:
        if sequence.finished:
            self.counters.outcomes[sequence.finish_reason or "stop"] += 1
        elif sequence.cancelled:
            sequence.abandon()
            self.counters.outcomes["cancelled"] += 1
        else:
            # CTranslate2 ended the row without an end token or a full budget: a length limit of its own.
            sequence.end("length")
            self.counters.outcomes["length"] += 1

    def _fast_tokenizer(self) -> FastTokenizer:
        assert isinstance(self._tokenizer, FastTokenizer)
        return self._tokenizer

    def _token_strings(self, token_ids: Sequence[int]) -> list[str]:
        """Return the vocabulary strings that CTranslate2 takes as input for ``token_ids``."""
        tokenizer = self._fast_tokenizer()
        return [tokenizer.id_to_token(token_id) or "" for token_id in token_ids]


def _host_row(logits: Any) -> np.ndarray:
    """Return row 0 of a step's logits (batch, vocabulary) as a float32 array in host memory."""
    import ctranslate2

    if logits.device != "cpu" or logits.dtype != ctranslate2.DataType.float32:
        logits = logits.to(ctranslate2.DataType.float32).to_device(ctranslate2.Device.cpu)
    return np.asarray(logits)[0]


def _sampling_key(sequence: SequenceOutput) -> tuple[int, float, float]:
    """Return CTranslate2's (sampling_topk, sampling_topp, sampling_temperature) for a request."""
    params = sequence.prepared.params
    if params.greedy:
        return GREEDY
    # CTranslate2 samples from the whole vocabulary when sampling_topk is 0.
    return params.top_k, params.top_p, params.temperature


def _sampling_groups(sequences: Sequence[SequenceOutput]) -> list[list[SequenceOutput]]:
    """Split requests into calls: equal sampling settings share one; seeded sampled requests run alone.

    One-token prompts get calls of their own. CTranslate2 4.8 (generate_batch with
    include_prompt_in_result=False) returns the prompt tokens of the longer rows as
    generated tokens when the shortest prompt of the batch is one token long.
    """
    groups: dict[tuple[tuple[int, float, float], bool], list[SequenceOutput]] = {}
    alone: list[list[SequenceOutput]] = []
    for sequence in sequences:
        params = sequence.prepared.params
        if params.seed is not None and not params.greedy:
            alone.append([sequence])
        else:
            key = (_sampling_key(sequence), sequence.prepared.prompt_tokens == 1)
            groups.setdefault(key, []).append(sequence)
    return list(groups.values()) + alone
