"""Deploy-to-ready time against the bare cost of starting a process that loads the same weights.

For each demo model and engine, this script measures two things, in one run:

- deploy-to-ready: from the deploy request (POST /api/models/{model}/deployments) until the
  endpoint answers a completion through the gateway, on a real Tunedock server;
- bare start-and-load: a fresh Python process that imports the engine's libraries, loads the
  same weights and generates one token, timed from spawn to exit.

The difference is what Tunedock adds: hashing, conversion checks, spawning, the model
server's HTTP start, health checks and switching traffic. Usage:

    .venv/bin/python bench/deploy_ready.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tunedock.conversion import prepare_weights

ROOT = Path(__file__).resolve().parent.parent
DEMO_MODELS = ROOT / "src" / "tunedock" / "demo" / "models"
ADMIN_KEY = "tdk_bench_admin_key_0123456789abcdef"
CASES = (
    ("date-normalizer-t5", "transformers", "none", "the 5th of March, 2021"),
    ("date-normalizer-t5", "ctranslate2", "int8", "the 5th of March, 2021"),
    ("date-normalizer-gpt2", "transformers", "none", "March 5, 2021 => "),
    ("date-normalizer-gpt2", "ctranslate2", "int8", "March 5, 2021 => "),
)
BARE_TRANSFORMERS = """
import sys, transformers
path = sys.argv[1]
config = transformers.AutoConfig.from_pretrained(path)
cls = transformers.AutoModelForSeq2SeqLM if config.is_encoder_decoder else transformers.AutoModelForCausalLM
model = cls.from_pretrained(path)
tokenizer = transformers.AutoTokenizer.from_pretrained(path)
ids = tokenizer("March 5, 2021", return_tensors="pt").input_ids
model.generate(ids, max_new_tokens=1)
"""
BARE_CTRANSLATE2 = """
import sys, ctranslate2, tokenizers
path, seq2seq = sys.argv[1], sys.argv[2] == "1"
tokenizer = tokenizers.Tokenizer.from_file(path + "/tokenizer.json")
tokens = tokenizer.encode("March 5, 2021").tokens
if seq2seq:
    ctranslate2.Translator(path, device="cpu").translate_batch([tokens], max_decoding_length=1)
else:
    ctranslate2.Generator(path, device="cpu").generate_batch([tokens], max_length=1)
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def running_server(home: Path) -> Iterator[str]:
    port = free_port()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("TUNEDOCK_")}
    environment.update(TUNEDOCK_HOME=str(home), TUNEDOCK_ADMIN_API_KEY=ADMIN_KEY,
                       TUNEDOCK_ADMIN_PASSWORD="bench-password-1", HF_HUB_OFFLINE="1")
    with (home / "server.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "tunedock", "serve", "--port", str(port)], cwd=home,
                                   env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def deploy_to_ready(client: httpx.Client, slug: str, engine: str, quantization: str, prompt: str) -> float:
    """Seconds from the deploy request until a completion through the gateway answers 200."""
    body = {"optimization": {"engine": engine, "quantization": quantization}}
    started = time.perf_counter()
    accepted = client.post(f"/api/models/{slug}/deployments", json=body)
    accepted.raise_for_status()
    deployment = accepted.json()["deployment"]["name"]
    while True:
        answer = client.post("/v1/completions", json={"model": slug, "prompt": prompt, "max_tokens": 1})
        if answer.status_code == 200:
            live = client.get(f"/api/models/{slug}/endpoint").json()["live_deployment"]
            if live == deployment:
                return time.perf_counter() - started
        time.sleep(0.02)


def bare_start_and_load(path: Path, engine: str, seq2seq: bool) -> float:
    script = BARE_TRANSFORMERS if engine == "transformers" else BARE_CTRANSLATE2
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", script, str(path), "1" if seq2seq else "0"], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Deploys and bare loads per case (default 3).")
    rounds = parser.parse_args().rounds
    rows = []
    with tempfile.TemporaryDirectory(prefix="tunedock-bench-ready-") as home_name:
        home = Path(home_name)
        with running_server(home) as url, httpx.Client(base_url=url, timeout=300,
                                                       headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
            for folder, engine, quantization, prompt in CASES:
                copy = home / "models" / f"{folder}-{engine}"
                shutil.copytree(DEMO_MODELS / folder, copy)
                slug = client.post("/api/models", json={"name": f"{folder} {engine}", "path": str(copy)}).json()["slug"]
                # The first deploy converts (ctranslate2); the timed ones reuse the cached weights.
                deploy_to_ready(client, slug, engine, quantization, prompt)
                ready = [deploy_to_ready(client, slug, engine, quantization, prompt) for _ in range(rounds)]
                # The same call the server made: it returns the cached directory without converting.
                weights = prepare_weights(copy, "seq2seq-lm" if "t5" in folder else "causal-lm", engine,
                                          quantization, home / "weights")
                bare = [bare_start_and_load(weights, engine, "t5" in folder) for _ in range(rounds)]
                rows.append((folder, engine, quantization, statistics.median(ready), statistics.median(bare)))
    print("| model | engine | deploy-to-ready median s | bare start-and-load median s | added s |")
    print("|---|---|--:|--:|--:|")
    for folder, engine, quantization, ready, bare in rows:
        print(f"| {folder} | {engine} {quantization} | {ready:.2f} | {bare:.2f} | {ready - bare:+.2f} |")


if __name__ == "__main__":
    main()
