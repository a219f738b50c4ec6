"""Dynamic batching in the transformers engine, driven in-process with real models.

Requests submitted before ``start`` are all waiting when the worker takes its first
batch, which makes the batch composition of these tests deterministic.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from tests.test_model_server import (DEMO_GPT2_PATH, DEMO_T5_PATH, MINILM_PATH, build_tiny_gpt2, build_tiny_t5,
                                     held_out_rows)
from tunedock.runtime.engines.base import GenerationParams, ModelFormat, PreparedGeneration
from tunedock.runtime.engines.batching_engine import BatchingOptions
from tunedock.runtime.engines.streams import GenerationFinished, GenerationStream, TextDelta
from tunedock.runtime.engines.transformers_engine import TransformersEngine

BATCH_SIZE = 8


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("batching")
    return {"causal-lm": build_tiny_gpt2(root / "tiny-gpt2"), "seq2seq-lm": build_tiny_t5(root / "tiny-t5")}


@pytest.fixture
def engines() -> Iterator[list[TransformersEngine]]:
    """Engines that a test loads; each is stopped after the test."""
    loaded: list[TransformersEngine] = []
    yield loaded
    for engine in loaded:
        engine.stop()


def load_engine(engines: list[TransformersEngine], path: Path, model_format: str,
                max_batch_size: int = BATCH_SIZE) -> TransformersEngine:
    engine = TransformersEngine(BatchingOptions(max_batch_size=max_batch_size), threads=1)
    engine.load(path, ModelFormat(model_format), "cpu")
    engines.append(engine)
    return engine


def params(max_tokens: int, temperature: float = 0.0, seed: int | None = None, **fields: Any) -> GenerationParams:
    return GenerationParams(temperature=temperature, top_p=fields.get("top_p", 1.0), top_k=fields.get("top_k", 0),
                            max_tokens=max_tokens, max_tokens_requested=True, seed=seed,
                            stop=tuple(fields.get("stop", ())))


async def collect(stream: GenerationStream) -> tuple[str, GenerationFinished]:
    parts = []
    async for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            return "".join(parts), event
    raise AssertionError("stream ended without GenerationFinished")


def run_batch(engine: TransformersEngine, requests: list[PreparedGeneration],
              late: list[PreparedGeneration] = ()) -> list[tuple[str, GenerationFinished]]:
    """Submit ``requests`` before starting the engine, and ``late`` ones once it decodes them."""

    async def main() -> list[tuple[str, GenerationFinished]]:
        loop = asyncio.get_running_loop()
        streams = [GenerationStream(loop) for _ in requests]
        for prepared, stream in zip(requests, streams):
            engine.submit(prepared, stream)
        engine.start()
        results = [asyncio.ensure_future(collect(stream)) for stream in streams]
        if late:
            # Decoding steps run only while earlier requests are in the batch.
            while engine.stats()["decoding_steps"] == 0:
                await asyncio.sleep(0.001)
            late_streams = [GenerationStream(loop) for _ in late]
            for prepared, stream in zip(late, late_streams):
                engine.submit(prepared, stream)
            results += [asyncio.ensure_future(collect(stream)) for stream in late_streams]
        return list(await asyncio.gather(*results))

    return asyncio.run(main())


@functools.cache
def reference_model(path: Path, model_format: str) -> tuple[Any, Any]:
    model_class = AutoModelForCausalLM if model_format == "causal-lm" else AutoModelForSeq2SeqLM
    return AutoTokenizer.from_pretrained(path), model_class.from_pretrained(path).eval()


def reference_tokens(path: Path, model_format: str, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy tokens of ``model.generate`` on ``prompt`` alone."""
    tokenizer, model = reference_model(path, model_format)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    generated_from = inputs["input_ids"].shape[1] if model_format == "causal-lm" else 1
    return output[0, generated_from:].tolist()


def reference_text(path: Path, model_format: str, prompt: str, max_new_tokens: int) -> str:
    tokenizer, _ = reference_model(path, model_format)
    return tokenizer.decode(reference_tokens(path, model_format, prompt, max_new_tokens), skip_special_tokens=True)


DEMO_MODELS = [(DEMO_GPT2_PATH, "causal-lm", "{} => "), (DEMO_T5_PATH, "seq2seq-lm", "{}")]


@pytest.mark.parametrize(("path", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_batched_greedy_equals_unbatched(engines: list[TransformersEngine], path: Path, model_format: str,
                                         prompt_format: str) -> None:
    engine = load_engine(engines, path, model_format)
    prompts = [prompt_format.format(row["input"]) for row in held_out_rows(path, 2 * BATCH_SIZE)]
    results = run_batch(engine, [engine.prepare_completion(prompt, params(12)) for prompt in prompts])
    expected = [reference_text(path, model_format, prompt, 12) for prompt in prompts]
    assert [text for text, _ in results] == expected
    assert engine.stats()["largest_batch"] == BATCH_SIZE


@pytest.mark.parametrize("model_format", ["causal-lm", "seq2seq-lm"])
def test_late_requests_join_running_batch(engines: list[TransformersEngine], tiny_models: dict[str, Path],
                                          model_format: str) -> None:
    path = tiny_models[model_format]
    engine = load_engine(engines, path, model_format)
    early = ["hello world", "abc", "a longer prompt"]
    late = ["late one", "x", "another late prompt, longer"]
    results = run_batch(engine, [engine.prepare_completion(prompt, params(40)) for prompt in early],
                        late=[engine.prepare_completion(prompt, params(30)) for prompt in late])
    expected = ([reference_text(path, model_format, prompt, 40) for prompt in early]
                + [reference_text(path, model_format, prompt, 30) for prompt in late])
    assert [text for text, _ in results] == expected


def test_batched_usage_counts_tokens(engines: list[TransformersEngine], tiny_models: dict[str, Path]) -> None:
    path = tiny_models["causal-lm"]
    engine = load_engine(engines, path, "causal-lm")
    prompts = ["hello", "hi there"]
    results = run_batch(engine, [engine.prepare_completion(prompt, params(7)) for prompt in prompts])
    expected = [len(reference_tokens(path, "causal-lm", prompt, 7)) for prompt in prompts]
    assert [finished.completion_tokens for _, finished in results] == expected


def test_short_request_finishes_before_long(engines: list[TransformersEngine], tiny_models: dict[str, Path]) -> None:
    engine = load_engine(engines, tiny_models["seq2seq-lm"], "seq2seq-lm")
    finished_order: list[str] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        streams = {"long": GenerationStream(loop), "short": GenerationStream(loop)}
        engine.submit(engine.prepare_completion("hello", params(300)), streams["long"])
        engine.submit(engine.prepare_completion("hello", params(2)), streams["short"])
        engine.start()

        async def wait(name: str) -> None:
            await collect(streams[name])
            finished_order.append(name)

        await asyncio.gather(wait("long"), wait("short"))

    asyncio.run(main())
    assert finished_order == ["short", "long"]


def test_each_request_keeps_its_own_sampling(engines: list[TransformersEngine], tiny_models: dict[str, Path]) -> None:
    path = tiny_models["causal-lm"]
    batched = load_engine(engines, path, "causal-lm")
    alone = load_engine(engines, path, "causal-lm", max_batch_size=1)
    requests = [params(12), params(12, temperature=1.0, seed=3), params(12, temperature=0.7, seed=9, top_k=5)]
    together = run_batch(batched, [batched.prepare_completion("hello", request) for request in requests])
    one_by_one = run_batch(alone, [alone.prepare_completion("hello", request) for request in requests])
    assert [text for text, _ in together] == [text for text, _ in one_by_one]


def test_cancelled_queued_request_is_skipped(engines: list[TransformersEngine], tiny_models: dict[str, Path]) -> None:
    engine = load_engine(engines, tiny_models["causal-lm"], "causal-lm")

    async def main() -> str:
        loop = asyncio.get_running_loop()
        cancelled, kept = GenerationStream(loop), GenerationStream(loop)
        engine.submit(engine.prepare_completion("hello", params(5)), cancelled)
        engine.submit(engine.prepare_completion("hello", params(5)), kept)
        cancelled.cancel()
        engine.start()
        text, _ = await collect(kept)
        return text

    asyncio.run(main())
    assert engine.stats()["outcomes"]["cancelled"] == 1


def test_batched_embeddings_equal_one_at_a_time(engines: list[TransformersEngine]) -> None:
    texts = ["A man is eating food.", "short", "A man is riding a white horse on an enclosed ground.", "Hello"]
    batched = load_engine(engines, MINILM_PATH, "embedding")
    futures = [batched.embed([text]) for text in texts]
    batched.start()
    together = np.stack([future.result(timeout=60).vectors[0] for future in futures])
    alone_engine = load_engine(engines, MINILM_PATH, "embedding", max_batch_size=1)
    alone_engine.start()
    alone = np.stack([alone_engine.embed([text]).result(timeout=60).vectors[0] for text in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert batched.stats()["largest_batch"] == len(texts)
