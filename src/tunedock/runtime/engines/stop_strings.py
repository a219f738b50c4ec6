"""Stop sequences matched on decoded text, as the OpenAI API defines them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase, StoppingCriteria

# Tokens decoded per stop-string character when checking the tail of a generation.
# Byte-level BPE can spend up to 4 tokens on one UTF-8 character.
_TOKENS_PER_CHAR = 4
# Extra tokens decoded before the tail, so that a tokenizer that drops the leading
# space of the first decoded token cannot cut the start of a stop string.
_TAIL_MARGIN_TOKENS = 8


class StopStringCriteria(StoppingCriteria):
    """Stops generation once the generated text contains one of the stop strings.

    Only tokens after ``generated_from`` count, so a stop string inside the prompt
    does not end the generation. Each step decodes only the tail of the generation
    that could hold a newly completed stop string. Supports a batch of one.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop: Sequence[str],
                 generated_from: int) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._generated_from = generated_from
        longest = max(len(text) for text in self._stop)
        self._tail_tokens = longest * _TOKENS_PER_CHAR + _TAIL_MARGIN_TOKENS

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None,
                 **kwargs: object) -> torch.BoolTensor:
        start = max(self._generated_from, input_ids.shape[1] - self._tail_tokens)
        tail = self._tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
        found = any(text in tail for text in self._stop)
        return torch.full((input_ids.shape[0],), found, dtype=torch.bool, device=input_ids.device)


def cut_at_stop_string(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Return the text before the earliest stop string, and whether one was found."""
    positions = [index for index in (text.find(s) for s in stop) if index >= 0]
    if not positions:
        return text, False
    return text[:min(positions)], True
