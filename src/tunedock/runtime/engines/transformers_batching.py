"""Step-wise batched decoding with transformers models and their key-value caches.

Both step models keep one key-value cache for the whole batch, in the layout that
transformers' attention expects: (batch, heads, positions, head size) per layer.

Causal models (GPT-2, Llama, ...): prompts are left-padded, so every row's newest token
is in the last column, and an attention mask hides the padding. Position ids come from
each row's own count of real tokens, so a padded row sees the positions it would see
alone. Merging two batches left-pads the shorter cache.

Seq2seq models (T5, BART, ...): the encoder runs once per prompt, at prefill. The
decoder then runs step by step over a self-attention cache, left-padded like a causal
model's, and a cross-attention cache over the right-padded encoder output.

Padding is masked, so a row's tokens match those it gets alone. NOTE: the float
arithmetic of a batch can differ from that of a single row in the last bits, so two
candidate tokens whose logits differ by less than that may swap.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, EncoderDecoderCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer

from tunedock.runtime.engines.sampling import choose_next_tokens
from tunedock.runtime.engines.sequences import SequenceOutput

# Token id written into padded positions; attention masks hide it, so any id works.
_PADDING_ID = 0


@dataclass
class CausalBatch:
    cache: DynamicCache
    attention_mask: torch.Tensor  # (batch, cached positions)
    positions: torch.Tensor  # (batch,) position id of each row's next token


@dataclass
class Seq2SeqBatch:
    cache: EncoderDecoderCache
    decoder_mask: torch.Tensor  # (batch, cached decoder positions)
    encoder_output: torch.Tensor  # (batch, source positions, hidden size)
    encoder_mask: torch.Tensor  # (batch, source positions)


def supports_batching(model: PreTrainedModel) -> bool:
    """Return whether the model's cache is made of plain full-attention layers that this module can merge.

    Sliding-window and other special caches keep positions in another layout.
    """
    config = model.config.get_text_config(decoder=True)
    layers = DynamicCache(config=config).layers
    return all(type(layer) is DynamicLayer for layer in layers)


class CausalStepModel:
    """Batched step-wise decoding of a causal language model."""

    def __init__(self, model: PreTrainedModel, device: torch.device) -> None:
        self._model = model
        self._device = device
        parameters = inspect.signature(model.forward).parameters
        self._takes_position_ids = "position_ids" in parameters
        self._takes_logits_to_keep = "logits_to_keep" in parameters

    @torch.inference_mode()
    def prefill(self, sequences: Sequence[SequenceOutput]) -> tuple[CausalBatch, list[int]]:
        prompts = [sequence.prepared.prompt_ids for sequence in sequences]
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.tensor([[_PADDING_ID] * (width - len(prompt)) + list(prompt) for prompt in prompts],
                                 device=self._device)
        mask = torch.tensor([[0] * (width - len(prompt)) + [1] * len(prompt) for prompt in prompts],
                            device=self._device)
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        batch = CausalBatch(DynamicCache(config=self._model.config), mask, mask.sum(dim=-1))
        logits = self._forward(input_ids, batch.cache, mask, positions, prefill=True)
        return batch, choose_next_tokens(logits, sequences)

    @torch.inference_mode()
    def step(self, batch: CausalBatch, sequences: Sequence[SequenceOutput]) -> list[int]:
        last_tokens = torch.tensor([[sequence.token_ids[-1]] for sequence in sequences], device=self._device)
        ones = batch.attention_mask.new_ones(batch.attention_mask.shape[0], 1)
        batch.attention_mask = torch.cat([batch.attention_mask, ones], dim=-1)
        logits = self._forward(last_tokens, batch.cache, batch.attention_mask, batch.positions[:, None],
                               prefill=False)
        batch.positions = batch.positions + 1
        return choose_next_tokens(logits, sequences)

    def select(self, batch: CausalBatch, rows: Sequence[int]) -> CausalBatch:
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        batch.cache.batch_select_indices(index)
        selected = CausalBatch(batch.cache, batch.attention_mask[index], batch.positions[index])
        _trim_left_padding(selected.cache, selected, "attention_mask")
        return selected

    def merge(self, first: CausalBatch, second: CausalBatch) -> CausalBatch:
        width = max(first.attention_mask.shape[1], second.attention_mask.shape[1])
        return CausalBatch(
            cache=_merge_caches(first.cache, second.cache, width, _pad_left),
            attention_mask=torch.cat([_pad_left(first.attention_mask, width), _pad_left(second.attention_mask, width)]),
            positions=torch.cat([first.positions, second.positions]),
        )

    def _forward(self, input_ids: torch.Tensor, cache: DynamicCache, mask: torch.Tensor,
                 positions: torch.Tensor, prefill: bool) -> torch.Tensor:
        options: dict[str, object] = {}
        if self._takes_position_ids:
            options["position_ids"] = positions
        if prefill and self._takes_logits_to_keep:
            options["logits_to_keep"] = 1
        output = self._model(input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=True, **options)
        return output.logits[:, -1, :]


class Seq2SeqStepModel:
    """Batched step-wise decoding of an encoder-decoder model."""

    def __init__(self, model: PreTrainedModel, device: torch.device, decoder_start_token_id: int) -> None:
        self._model = model
        self._device = device
        self._decoder_start_token_id = decoder_start_token_id

    @torch.inference_mode()
    def prefill(self, sequences: Sequence[SequenceOutput]) -> tuple[Seq2SeqBatch, list[int]]:
        prompts = [sequence.prepared.prompt_ids for sequence in sequences]
        width = max(len(prompt) for prompt in prompts)
        input_ids = torch.tensor([list(prompt) + [_PADDING_ID] * (width - len(prompt)) for prompt in prompts],
                                 device=self._device)
        encoder_mask = torch.tensor([[1] * len(prompt) + [0] * (width - len(prompt)) for prompt in prompts],
                                    device=self._device)
        encoder_output = self._model.get_encoder()(input_ids=input_ids, attention_mask=encoder_mask).last_hidden_state
        config = self._model.config
        cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        empty_mask = encoder_mask.new_zeros(len(prompts), 0)
        batch = Seq2SeqBatch(cache, empty_mask, encoder_output, encoder_mask)
        start = torch.full((len(prompts), 1), self._decoder_start_token_id, device=self._device)
        return batch, choose_next_tokens(self._decode(batch, start), sequences)

    @torch.inference_mode()
    def step(self, batch: Seq2SeqBatch, sequences: Sequence[SequenceOutput]) -> list[int]:
        last_tokens = torch.tensor([[sequence.token_ids[-1]] for sequence in sequences], device=self._device)
        return choose_next_tokens(self._decode(batch, last_tokens), sequences)

    def select(self, batch: Seq2SeqBatch, rows: Sequence[int]) -> Seq2SeqBatch:
        index = torch.tensor(rows, dtype=torch.long, device=self._device)
        batch.cache.batch_select_indices(index)
        selected = Seq2SeqBatch(batch.cache, batch.decoder_mask[index], batch.encoder_output[index],
                                batch.encoder_mask[index])
        _trim_left_padding(selected.cache.self_attention_cache, selected, "decoder_mask")
        return selected

    def merge(self, first: Seq2SeqBatch, second: Seq2SeqBatch) -> Seq2SeqBatch:
        width = max(first.decoder_mask.shape[1], second.decoder_mask.shape[1])
        source_width = max(first.encoder_mask.shape[1], second.encoder_mask.shape[1])
        self_attention = _merge_caches(first.cache.self_attention_cache, second.cache.self_attention_cache,
                                       width, _pad_left)
        cross_attention = _merge_caches(first.cache.cross_attention_cache, second.cache.cross_attention_cache,
                                        source_width, _pad_right)
        return Seq2SeqBatch(
            cache=EncoderDecoderCache(self_attention, cross_attention),
            decoder_mask=torch.cat([_pad_left(first.decoder_mask, width), _pad_left(second.decoder_mask, width)]),
            encoder_output=torch.cat([_pad_right(first.encoder_output, source_width, dim=1),
                                      _pad_right(second.encoder_output, source_width, dim=1)]),
            encoder_mask=torch.cat([_pad_right(first.encoder_mask, source_width),
                                    _pad_right(second.encoder_mask, source_width)]),
        )

    def _decode(self, batch: Seq2SeqBatch, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        ones = batch.decoder_mask.new_ones(batch.decoder_mask.shape[0], 1)
        batch.decoder_mask = torch.cat([batch.decoder_mask, ones], dim=-1)
        output = self._model(encoder_outputs=(batch.encoder_output,), attention_mask=batch.encoder_mask,
                             decoder_input_ids=decoder_input_ids, decoder_attention_mask=batch.decoder_mask,
                             cache=batch.cache, use_cache=True)
        return output.logits[:, -1, :]


def _pad_left(tensor: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


def _pad_right(tensor: torch.Tensor, width: int, dim: int = -1) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor, tensor.new_zeros(shape)], dim=dim)


def _merge_caches(first: DynamicCache, second: DynamicCache, width: int, pad: object) -> DynamicCache:
    """Stack two caches along the batch dimension, padding the positions of each to ``width``."""
    layers = []
    for first_layer, second_layer in zip(first.layers, second.layers, strict=True):
        keys = torch.cat([pad(first_layer.keys, width, dim=2), pad(second_layer.keys, width, dim=2)])  # type: ignore[operator]
        values = torch.cat([pad(first_layer.values, width, dim=2), pad(second_layer.values, width, dim=2)])  # type: ignore[operator]
        layers.append((keys, values))
    return DynamicCache(layers)


def _trim_left_padding(cache: DynamicCache, batch: CausalBatch | Seq2SeqBatch, mask_field: str) -> None:
    """Drop leading positions that are padding in every row, which finished rows leave behind."""
    mask: torch.Tensor = getattr(batch, mask_field)
    used = mask.any(dim=0)
    if used.numel() == 0 or bool(used[0]):
        return
    first_used = int(used.int().argmax())
    setattr(batch, mask_field, mask[:, first_used:])
    for layer in cache.layers:
        layer.keys = layer.keys[:, :, first_used:, :]
        layer.values = layer.values[:, :, first_used:, :]
