"""The ctranslate2 engine against the transformers engine, on converted demo and tiny models."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.test_model_server import (DEMO_GPT2_PATH, DEMO_T5_PATH, REQUEST_TIMEOUT_SECONDS, ModelServer,
                                     build_tiny_gpt2, build_tiny_t5, held_out_rows, launch_model_server,
                                     stop_model_server, wait_until_listening)
from tests.test_runtime_batching import collect, params, reference_text
from tests.test_runtime_streaming import SCRIPT, SCRIPT_PROMPT, build_scripted_gpt2
from tunedock.conversion.converter import convert
from tunedock.runtime.engines.base import ModelFormat, PreparedGeneration
from tunedock.runtime.engines.batching_engine import BatchingOptions
from tunedock.runtime.engines.ctranslate2_engine import CTranslate2Engine
from tunedock.runtime.engines.streams import GenerationFinished, GenerationStream, TextDelta

ACCURACY_TOLERANCE = 0.02
GREEDY_ROWS = 60


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Models converted in this process, which is faster than the child process of prepare_weights."""
    root = tmp_path_factory.mktemp("ctranslate2")
    sources = {
        "demo-gpt2": (DEMO_GPT2_PATH, "causal-lm"), "demo-t5": (DEMO_T5_PATH, "seq2seq-lm"),
        "tiny-gpt2": (build_tiny_gpt2(root / "tiny-gpt2"), "causal-lm"),
        "tiny-t5": (build_tiny_t5(root / "tiny-t5"), "seq2seq-lm"),
        "scripted": (build_scripted_gpt2(root / "scripted", SCRIPT, 2), "causal-lm"),
    }
    paths = {}
    for name, (source, model_format) in sources.items():
        for quantization in ("float32", "int8"):
            output = root / f"{name}-{quantization}"
            convert(source, model_format, quantization, "sha256:test", output)
            paths[f"{name}-{quantization}"] = output
    return {**paths, **{f"{name}-source": source for name, (source, _) in sources.items()}}


@pytest.fixture
def engines() -> Iterator[list[CTranslate2Engine]]:
    loaded: list[CTranslate2Engine] = []
    yield loaded
    for engine in loaded:
        engine.stop()


def load_engine(engines: list[CTranslate2Engine], path: Path, model_format: str,
                max_batch_size: int = 16) -> CTranslate2Engine:
    engine = CTranslate2Engine(BatchingOptions(max_batch_size=max_batch_size, max_queue_size=400), threads=1)
    engine.load(path, ModelFormat(model_format), "cpu")
    engines.append(engine)
    return engine


def start_engine(engines: list[CTranslate2Engine], path: Path, model_format: str,
                 max_batch_size: int = 16) -> CTranslate2Engine:
    engine = load_engine(engines, path, model_format, max_batch_size)
    engine.start()
    return engine


def generate(engine: CTranslate2Engine, requests: list[PreparedGeneration]) -> list[tuple[str, GenerationFinished]]:
    async def main() -> list[tuple[str, GenerationFinished]]:
        loop = asyncio.get_running_loop()
        streams = [GenerationStream(loop) for _ in requests]
        for prepared, stream in zip(requests, streams):
            engine.submit(prepared, stream)
        return list(await asyncio.gather(*(collect(stream) for stream in streams)))

    return asyncio.run(main())


DEMO_MODELS = [("demo-gpt2", "causal-lm", "{} => "), ("demo-t5", "seq2seq-lm", "{}")]


@pytest.mark.parametrize(("name", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_float32_greedy_equals_transformers(converted: dict[str, Path], engines: list[CTranslate2Engine],
                                            name: str, model_format: str, prompt_format: str) -> None:
    source = converted[f"{name}-source"]
    engine = start_engine(engines, converted[f"{name}-float32"], model_format)
    prompts = [prompt_format.format(row["input"]) for row in held_out_rows(source, GREEDY_ROWS)]
    results = generate(engine, [engine.prepare_completion(prompt, params(12)) for prompt in prompts])
    assert [text for text, _ in results] == [reference_text(source, model_format, prompt, 12) for prompt in prompts]


@pytest.mark.parametrize(("name", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_int8_keeps_demo_accuracy(converted: dict[str, Path], engines: list[CTranslate2Engine], name: str,
                                  model_format: str, prompt_format: str) -> None:
    source = converted[f"{name}-source"]
    # The training script measured the float32 model's exact-match accuracy on this same held-out set.
    float32_accuracy = json.loads((source / "training_report.json").read_text())["accuracy"]
    rows = held_out_rows(source, 300)
    engine = start_engine(engines, converted[f"{name}-int8"], model_format)
    results = generate(engine, [engine.prepare_completion(prompt_format.format(row["input"]), params(12))
                                for row in rows])
    accuracy = sum(text == row["expected"] for (text, _), row in zip(results, rows)) / len(rows)
    assert accuracy >= float32_accuracy - ACCURACY_TOLERANCE


def test_stream_pieces_are_whole_characters(converted: dict[str, Path], engines: list[CTranslate2Engine]) -> None:
    engine = start_engine(engines, converted["scripted-float32"], "causal-lm")

    async def main() -> list[str]:
        stream = GenerationStream(asyncio.get_running_loop())
        engine.submit(engine.prepare_completion(SCRIPT_PROMPT, params(40)), stream)
        return [event.text async for event in stream if isinstance(event, TextDelta)]

    pieces = asyncio.run(main())
    assert "".join(pieces) == SCRIPT
    assert {"👋", "日", "本", "語"} <= set(pieces)


def test_stop_string_spanning_tokens(converted: dict[str, Path], engines: list[CTranslate2Engine]) -> None:
    engine = start_engine(engines, converted["scripted-int8"], "causal-lm")
    prepared = engine.prepare_completion(SCRIPT_PROMPT, params(40, stop=["本語"]))
    [(text, finished)] = generate(engine, [prepared])
    assert text == SCRIPT[:SCRIPT.index("本語")]
    assert finished.finish_reason == "stop"


def test_rows_keep_their_own_budget(converted: dict[str, Path], engines: list[CTranslate2Engine]) -> None:
    engine = start_engine(engines, converted["tiny-t5-float32"], "seq2seq-lm")
    results = generate(engine, [engine.prepare_completion("hello", params(max_tokens)) for max_tokens in (3, 30)])
    assert [finished.completion_tokens for _, finished in results] == [3, 30]


def test_seeded_sampling_repeats(converted: dict[str, Path], engines: list[CTranslate2Engine]) -> None:
    engine = start_engine(engines, converted["tiny-gpt2-float32"], "causal-lm")
    request = engine.prepare_completion("hello", params(16, temperature=1.0, seed=7))
    first, second = generate(engine, [request, request])
    assert first[0] == second[0]


def test_different_seeds_sample_differently(converted: dict[str, Path], engines: list[CTranslate2Engine]) -> None:
    engine = start_engine(engines, converted["tiny-gpt2-float32"], "causal-lm")
    results = generate(engine, [engine.prepare_completion("hello", params(16, temperature=1.0, seed=seed))
                                for seed in (1, 2)])
    assert results[0][0] != results[1][0]


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "seed": 3}], ids=["greedy", "seeded"])
def test_cancelled_generation_stops(converted: dict[str, Path], engines: list[CTranslate2Engine],
                                    sampling: dict[str, float]) -> None:
    engine = start_engine(engines, converted["tiny-t5-float32"], "seq2seq-lm")

    async def main() -> None:
        stream = GenerationStream(asyncio.get_running_loop())
        engine.submit(engine.prepare_completion("hello", params(5000, **sampling)), stream)
        await stream.next_event()
        stream.cancel()
        while engine.stats()["running"]:
            await asyncio.sleep(0.01)

    asyncio.run(main())
    assert engine.stats()["outcomes"] == {"cancelled": 1}
    assert engine.stats()["generated_tokens"] < 5000


def test_model_server_runs_without_torch(converted: dict[str, Path], tmp_path: Path) -> None:
    server = launch_model_server(converted["demo-gpt2-int8"], "causal-lm", tmp_path, "--engine", "ctranslate2")
    try:
        wait_until_listening(server)
        response = server.post("/v1/completions", {"prompt": "June 18th, 2025 => ", "temperature": 0})
        mapped = Path(f"/proc/{server.process.pid}/maps").read_text()
    finally:
        stop_model_server(server)
    assert response.json()["choices"][0]["text"] == "2025-06-18"
    assert "libtorch" not in mapped


def test_causal_rows_of_different_prompt_lengths_keep_budget(converted: dict[str, Path],
                                                             engines: list[CTranslate2Engine]) -> None:
    engine = start_engine(engines, converted["tiny-gpt2-float32"], "causal-lm")
    prompts = ["a", "a much longer prompt"]
    results = generate(engine, [engine.prepare_completion(prompt, params(20)) for prompt in prompts])
    expected = [reference_text(converted["tiny-gpt2-source"], "causal-lm", prompt, 20) for prompt in prompts]
    assert [text for text, _ in results] == expected
    assert [finished.completion_tokens for _, finished in results] == [20, 20]


# --- seeds on the demo models ---------------------------------------------------------------

# Inputs that are not dates, where the demo models spread probability over several tokens.
UNSURE_INPUTS = ["hello there, friend", "the fourth of July", "tomorrow at noon"]
SAMPLED = {"temperature": 1.5, "seed": 7}
# Requests that share the batch with the seeded one: greedy, unseeded, other seeds, other filters.
COMPANY = [{"temperature": 0}, {"temperature": 1.5}, {"temperature": 1.5, "seed": 8},
           {"temperature": 0.7, "top_k": 5}, {"temperature": 1.5, "top_p": 0.9, "seed": 7}]


@pytest.fixture(scope="module")
def demo_servers(converted: dict[str, Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModelServer]]:
    """Start model servers on the int8 demo models that wait up to 100 ms after a request for others."""
    root = tmp_path_factory.mktemp("ctranslate2-servers")
    started = {name: launch_model_server(converted[f"{name}-int8"], model_format, root / name, "--engine",
                                         "ctranslate2", "--batch-wait-ms", "100")
               for name, model_format, _ in DEMO_MODELS}
    try:
        for server in started.values():
            wait_until_listening(server)
        yield started
    finally:
        for server in started.values():
            stop_model_server(server)


def complete_text(server: ModelServer, prompt: str, **fields: object) -> str:
    response = server.post("/v1/completions", {"prompt": prompt, "max_tokens": 16, **fields})
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["text"]


@pytest.mark.parametrize(("name", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_seed_repeats_over_http(demo_servers: dict[str, ModelServer], name: str, model_format: str,
                                prompt_format: str) -> None:
    prompts = [prompt_format.format(text) for text in UNSURE_INPUTS]
    first = [complete_text(demo_servers[name], prompt, **SAMPLED) for prompt in prompts]
    second = [complete_text(demo_servers[name], prompt, **SAMPLED) for prompt in prompts]
    assert first == second


@pytest.mark.parametrize(("name", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_seed_ignores_concurrent_requests(demo_servers: dict[str, ModelServer], name: str, model_format: str,
                                          prompt_format: str) -> None:
    server = demo_servers[name]
    prompt = prompt_format.format(UNSURE_INPUTS[0])
    alone = complete_text(server, prompt, **SAMPLED)
    with ThreadPoolExecutor(len(COMPANY) + 1) as pool:
        together = pool.submit(complete_text, server, prompt, **SAMPLED)
        company = [pool.submit(complete_text, server,
                               prompt_format.format(UNSURE_INPUTS[index % len(UNSURE_INPUTS)]), **fields)
                   for index, fields in enumerate(COMPANY)]
    for future in company:
        future.result()  # Raises the failure of a request that shared the batch.
    assert together.result() == alone


@pytest.mark.parametrize(("name", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_different_seeds_differ_over_http(demo_servers: dict[str, ModelServer], name: str, model_format: str,
                                          prompt_format: str) -> None:
    # The sampled text is a function of the seed, so this test compares two fixed results and cannot flake.
    prompts = [prompt_format.format(text) for text in UNSURE_INPUTS]
    first = [complete_text(demo_servers[name], prompt, temperature=1.0, seed=1) for prompt in prompts]
    second = [complete_text(demo_servers[name], prompt, temperature=1.0, seed=2) for prompt in prompts]
    assert first != second


@pytest.mark.parametrize(("name", "model_format", "prompt_format"), DEMO_MODELS, ids=["gpt2", "t5"])
def test_seeded_request_ignores_batch_company(converted: dict[str, Path], engines: list[CTranslate2Engine],
                                              name: str, model_format: str, prompt_format: str) -> None:
    engine = load_engine(engines, converted[f"{name}-float32"], model_format)
    seeded = engine.prepare_completion(prompt_format.format(UNSURE_INPUTS[0]), params(16, temperature=1.5, seed=7))
    company = [engine.prepare_completion(prompt_format.format(UNSURE_INPUTS[index % len(UNSURE_INPUTS)]),
                                         params(16, **fields))
               for index, fields in enumerate(COMPANY)]

    async def main() -> tuple[str, GenerationFinished]:
        # Queued before the worker starts, all of them are taken in its first batch.
        streams = [GenerationStream(asyncio.get_running_loop()) for _ in range(len(company) + 1)]
        for prepared, stream in zip([seeded, *company], streams):
            engine.submit(prepared, stream)
        engine.start()
        results = await asyncio.gather(*(collect(stream) for stream in streams))
        return results[0]

    together = asyncio.run(main())
    [alone] = generate(engine, [seeded])
    assert together[0] == alone[0]
