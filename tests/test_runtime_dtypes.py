"""The transformers engine's quantization: replicas that load the demo models in float32 or bfloat16.

Each replica is a real model-server process started by the control plane's replica
backend from a ReplicaSpec, so the quantization travels the same way as in a deploy:
spec, command line, engine, ``from_pretrained(dtype=...)``. The demo weights are stored
as float32.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.test_model_server import (DEMO_GPT2_PATH, DEMO_T5_PATH, MINILM_PATH, REQUEST_TIMEOUT_SECONDS,
                                     START_TIMEOUT_SECONDS, cosine, held_out_rows)
from tunedock.errors import ReplicaStartFailed
from tunedock.replicas.backend import ReplicaSpec, RunningReplica
from tunedock.replicas.local import LocalProcessBackend

pytestmark = pytest.mark.e2e

# name: (model directory, format, prompt format the model was trained on)
MODELS = {
    "demo-gpt2": (DEMO_GPT2_PATH, "causal-lm", "{} => "),
    "demo-t5": (DEMO_T5_PATH, "seq2seq-lm", "{}"),
    "minilm": (MINILM_PATH, "embedding", "{}"),
}
REPLICAS = [(name, quantization) for name in ("demo-gpt2", "demo-t5")
            for quantization in ("none", "float32", "bfloat16")]
REPLICAS += [("minilm", "none"), ("minilm", "bfloat16")]
GREEDY_ROWS = 60
ACCURACY_ROWS = 300
# Six of the 300 held-out rows, the same margin as the ctranslate2 int8 accuracy test.
ACCURACY_TOLERANCE = 0.02
MAX_TOKENS = 12
CONCURRENT_REQUESTS = 8
EMBEDDING_TEXTS = ["The meeting moved to the 5th of March.", "A cat sleeps on the warm windowsill.",
                   "Quarterly revenue grew by four percent.", "How do I reset my password?"]
MIN_EMBEDDING_COSINE = 0.99


@dataclass
class ReplicaHarness:
    """The replica backend, on an event loop of its own that each backend call runs on."""

    work_dir: Path
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    backend: LocalProcessBackend = field(
        default_factory=lambda: LocalProcessBackend(python=sys.executable, start_timeout=START_TIMEOUT_SECONDS))
    running: list[RunningReplica] = field(default_factory=list)

    def spec(self, name: str, quantization: str, index: int = 0) -> ReplicaSpec:
        model_path, model_format, _ = MODELS[name]
        return ReplicaSpec(deployment_id=1, replica_index=index, model_path=str(model_path),
                           model_format=model_format, served_model=name, engine="transformers", device="cpu",
                           threads=1, generation_defaults={"temperature": 0},
                           log_path=self.work_dir / f"{name}-{quantization}.log", quantization=quantization)

    def start_all(self, specs: list[ReplicaSpec]) -> list[RunningReplica]:
        """Start the replicas together, so that their loads overlap, and raise the first failure."""
        async def start() -> list[RunningReplica | BaseException]:
            return await asyncio.gather(*(self.backend.start(spec) for spec in specs), return_exceptions=True)

        results = self.loop.run_until_complete(start())
        self.running += [result for result in results if isinstance(result, RunningReplica)]
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [result for result in results if isinstance(result, RunningReplica)]

    def start(self, spec: ReplicaSpec) -> RunningReplica:
        return self.start_all([spec])[0]

    def close(self) -> None:
        for replica in self.running:
            self.loop.run_until_complete(self.backend.stop(replica))
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaHarness]:
    harness = ReplicaHarness(tmp_path_factory.mktemp("dtypes"))
    yield harness
    harness.close()


@pytest.fixture(scope="module")
def replicas(harness: ReplicaHarness) -> dict[tuple[str, str], RunningReplica]:
    """One replica per model and quantization, keyed by (model name, quantization)."""
    started = harness.start_all([harness.spec(name, quantization) for name, quantization in REPLICAS])
    return dict(zip(REPLICAS, started))


def complete(replica: RunningReplica, prompt: str) -> str:
    body = {"model": "demo", "prompt": prompt, "temperature": 0, "max_tokens": MAX_TOKENS}
    response = httpx.post(f"{replica.url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_SECONDS)
    response.raise_for_status()
    return str(response.json()["choices"][0]["text"])


def complete_one_at_a_time(replica: RunningReplica, prompts: list[str]) -> list[str]:
    return [complete(replica, prompt) for prompt in prompts]


def complete_concurrently(replica: RunningReplica, prompts: list[str]) -> list[str]:
    """Send the prompts from several clients at once, so that the engine decodes them in batches."""
    with ThreadPoolExecutor(CONCURRENT_REQUESTS) as pool:
        return list(pool.map(lambda prompt: complete(replica, prompt), prompts))


def prompts(name: str, count: int) -> list[str]:
    model_path, _, prompt_format = MODELS[name]
    return [prompt_format.format(row["input"]) for row in held_out_rows(model_path, count)]


def embed(replica: RunningReplica) -> np.ndarray:
    body = {"model": "minilm", "input": EMBEDDING_TEXTS}
    response = httpx.post(f"{replica.url}/v1/embeddings", json=body, timeout=REQUEST_TIMEOUT_SECONDS)
    response.raise_for_status()
    return np.array([item["embedding"] for item in response.json()["data"]])


def load_lines(harness: ReplicaHarness, name: str, quantization: str) -> list[str]:
    """The model server's own log lines about the loaded model, which name its dtype."""
    log = harness.spec(name, quantization).log_path.read_text(encoding="utf-8", errors="replace")
    return [line for line in log.splitlines() if "transformers_engine: Model " in line]


@pytest.mark.parametrize("name", ["demo-gpt2", "demo-t5"])
def test_float32_greedy_equals_none(replicas: dict[tuple[str, str], RunningReplica], name: str) -> None:
    rows = prompts(name, GREEDY_ROWS)
    as_stored = complete_one_at_a_time(replicas[(name, "none")], rows)
    assert complete_one_at_a_time(replicas[(name, "float32")], rows) == as_stored


@pytest.mark.parametrize("name", ["demo-gpt2", "demo-t5"])
def test_bfloat16_keeps_demo_accuracy(replicas: dict[tuple[str, str], RunningReplica], name: str) -> None:
    model_path = MODELS[name][0]
    # The training script measured the float32 model's exact-match accuracy on this same held-out set.
    float32_accuracy = json.loads((model_path / "training_report.json").read_text())["accuracy"]
    rows = held_out_rows(model_path, ACCURACY_ROWS)
    texts = complete_concurrently(replicas[(name, "bfloat16")], prompts(name, ACCURACY_ROWS))
    accuracy = sum(text == row["expected"] for text, row in zip(texts, rows)) / len(rows)
    assert accuracy >= float32_accuracy - ACCURACY_TOLERANCE


@pytest.mark.parametrize(("name", "quantization", "dtype"), [
    ("demo-gpt2", "none", "float32"), ("demo-gpt2", "float32", "float32"), ("demo-gpt2", "bfloat16", "bfloat16"),
    ("demo-t5", "bfloat16", "bfloat16"), ("minilm", "bfloat16", "bfloat16"),
])
def test_replica_logs_its_dtype(harness: ReplicaHarness, replicas: dict[tuple[str, str], RunningReplica],
                                name: str, quantization: str, dtype: str) -> None:
    [line] = load_lines(harness, name, quantization)
    assert f"dtype {dtype} (quantization {quantization})" in line


def test_bfloat16_embeddings_match_float32(replicas: dict[tuple[str, str], RunningReplica]) -> None:
    full = embed(replicas[("minilm", "none")])
    half = embed(replicas[("minilm", "bfloat16")])
    similarities = [cosine(left, right) for left, right in zip(full, half)]
    assert min(similarities) >= MIN_EMBEDDING_COSINE


@pytest.mark.parametrize("quantization", ["float16", "int8"])
def test_unsupported_quantization_fails_start(harness: ReplicaHarness, quantization: str) -> None:
    with pytest.raises(ReplicaStartFailed) as failure:
        harness.start(harness.spec("demo-gpt2", quantization))
    assert (f"model load failed: quantization {quantization!r} is not supported by the transformers engine "
            "on cpu; use one of none, float32, bfloat16") in str(failure.value)
