"""The shipped demo models load offline and still solve their task.

Each date normalizer is loaded in-process with transformers and greedily decodes the
first rows of the held-out set that was written next to it at training time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Set before transformers is imported: the demo models must load without a hub.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer  # noqa: E402

from tunedock.demo.registry import DemoModel, demo_models, demo_models_root  # noqa: E402

ROWS_CHECKED = 100
MIN_ACCURACY = 0.9
AUTO_CLASSES = {
    "date-normalizer-t5": AutoModelForSeq2SeqLM,
    "date-normalizer-gpt2": AutoModelForCausalLM,
}
ROUND_TRIP_SAMPLES = [
    "the 5th of March, 2021",
    "  two  spaces, then one ",
    "Mar 5th 2021 => 2021-03-05",
]
MODEL_FILES = ["model.safetensors", "config.json", "generation_config.json",
               "tokenizer.json", "tokenizer_config.json", "held_out.jsonl"]


@pytest.fixture(scope="module", params=sorted(AUTO_CLASSES))
def loaded(request):
    model_dir = demo_models_root() / request.param
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AUTO_CLASSES[request.param].from_pretrained(model_dir).eval()
    return model_dir, model, tokenizer


def read_held_out(model_dir: Path) -> list[dict]:
    lines = (model_dir / "held_out.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:ROWS_CHECKED]]


def greedy_completions(model, tokenizer, prompts: list[str]) -> list[str]:
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**encoded)
    # A decoder-only model returns its prompt before the completion.
    if not model.config.is_encoder_decoder:
        output = output[:, encoded["input_ids"].shape[1]:]
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def test_held_out_exact_match(loaded):
    model_dir, model, tokenizer = loaded
    report = json.loads((model_dir / "training_report.json").read_text(encoding="utf-8"))
    rows = read_held_out(model_dir)
    prompts = [report["prompt_format"].format(input=row["input"]) for row in rows]

    predictions = greedy_completions(model, tokenizer, prompts)

    correct = sum(pred == row["expected"] for pred, row in zip(predictions, rows))
    assert correct / len(rows) >= MIN_ACCURACY, list(zip(prompts, predictions))[:10]


@pytest.mark.parametrize("sample", ROUND_TRIP_SAMPLES)
def test_tokenizer_round_trip(loaded, sample):
    _, _, tokenizer = loaded
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == sample


@pytest.mark.parametrize("model_dir_name", sorted(AUTO_CLASSES))
@pytest.mark.parametrize("file_name", MODEL_FILES)
def test_model_dir_has_file(model_dir_name, file_name):
    assert (demo_models_root() / model_dir_name / file_name).is_file()


@pytest.mark.parametrize("demo", demo_models(), ids=lambda demo: demo.name)
def test_demo_model_path_exists(demo: DemoModel):
    assert (demo.path / "config.json").is_file()
