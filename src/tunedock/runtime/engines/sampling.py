"""Choosing each sequence's next token from a batch of logits, with its own settings.

Greedy rows take the most likely token. Sampled rows apply, in this order, the
temperature, top-k and top-p (nucleus) filters, as ``transformers`` does by default,
and draw from a ``torch.Generator`` that belongs to the request. A request with a
``seed`` seeds its own generator, so the same seed and parameters give the same text
whatever else shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tunedock.runtime.engines.base import GenerationParams
from tunedock.runtime.engines.sequences import SequenceOutput


def choose_next_tokens(logits: torch.Tensor, sequences: Sequence[SequenceOutput]) -> list[int]:
    """Return the next token of each row of ``logits`` (batch, vocabulary)."""
    chosen = logits.argmax(dim=-1)
    for row, sequence in enumerate(sequences):
        params = sequence.prepared.params
        if not params.greedy:
            chosen[row] = _sample(logits[row], params, _generator(sequence, logits.device))
    return chosen.tolist()


def _generator(sequence: SequenceOutput, device: torch.device) -> torch.Generator:
    if isinstance(sequence.sampling_state, torch.Generator):
        return sequence.sampling_state
    generator = torch.Generator(device=device)
    seed = sequence.prepared.params.seed
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    sequence.sampling_state = generator
    return generator


def _sample(logits: torch.Tensor, params: GenerationParams, generator: torch.Generator) -> torch.Tensor:
    scores = logits.float() / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        threshold = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < threshold, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probabilities = sorted_scores.softmax(dim=-1)
        # Drop a token when the more likely tokens already reach top_p; the first always stays.
        drop = (probabilities.cumsum(dim=-1) - probabilities) >= params.top_p
        drop[0] = False
        scores = scores.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[0]
