"""Train the two tiny demo models that Tunedock ships: written dates to ISO 8601.

Both models learn one task with exactly one correct output: turn a written English
date such as "the 5th of March, 2021" into "2021-03-05". Model A is a T5
encoder-decoder, model B a GPT-2 decoder-only model. Both use the same
character-level tokenizer, the same seeded data and the same held-out set, which
is written next to each model as ``held_out.jsonl`` so that anyone can re-check the
accuracy in the README.

Run from the repository root (CPU only, about 6 minutes per model on 2 shared cores):

    .venv/bin/python scripts/train_demo_models.py [--only t5|gpt2] [--seed 0]
"""

from __future__ import annotations

import argparse
import calendar
import datetime as dt
import json
import logging
import math
import os
import random
import shlex
import string
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Nothing in this script downloads: the tokenizer is built here and the models start
# from random weights. The flag makes any accidental hub lookup fail instead.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT_DIR = REPO_ROOT / "src" / "tunedock" / "demo" / "models"
T5_DIR_NAME = "date-normalizer-t5"
GPT2_DIR_NAME = "date-normalizer-gpt2"

FIRST_YEAR, LAST_YEAR = 1950, 2049
TRAIN_SIZE = 60_000
HELD_OUT_SIZE = 300
BATCH_SIZE = 128
PEAK_LEARNING_RATE = 2e-3
DEFAULT_STEPS = {"t5": 1500, "gpt2": 1000}
WARMUP_STEPS = 200
# 10 characters of "YYYY-MM-DD", the end-of-sequence token, and one token of slack.
MAX_NEW_TOKENS = 12
MAX_POSITIONS = 64

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
# The GPT-2 model is prompted with the written date followed by this separator, and
# its completion is the bare ISO date. A character tokenizer encodes the trailing
# space the same way in training and in a prompt, so the separator can end in one.
GPT2_SEPARATOR = " => "
GPT2_PROMPT_FORMAT = "{input}" + GPT2_SEPARATOR

# Written forms of a date. F: full month name, A: three-letter abbreviation,
# d: day without padding, dd: two-digit day, o: ordinal day ("5th"), Y: four-digit year.
DATE_FORMS = (
    "{F} {d}, {Y}",
    "{A} {d}, {Y}",
    "{F} {o}, {Y}",
    "{d} {F} {Y}",
    "{o} {F} {Y}",
    "{dd} {A} {Y}",
    "{A} {o} {Y}",
    "the {o} of {F}, {Y}",
    "{Y} {F} {dd}",
    "{Y} {A} {dd}",
)


@dataclass(frozen=True)
class Example:
    input: str
    expected: str


@dataclass(frozen=True)
class TrainingSettings:
    steps: int
    seed: int


@dataclass(frozen=True)
class TrainingResult:
    accuracy: float
    steps: int
    seconds: float
    parameter_count: int




# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------

def ordinal(day: int) -> str:
    # 11th, 12th and 13th take "th" although they end in 1, 2 and 3.
    if 10 <= day % 100 <= 20:
        return f"{day}th"
    return f"{day}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(day % 10, 'th') }"


def render_date(date: dt.date, form: str) -> str:
    return form.format(
        F=calendar.month_name[date.month],
        A=calendar.month_abbr[date.month],
        d=date.day,
        dd=f"{date.day:02d}",
        o=ordinal(date.day),
        Y=f"{date.year:04d}",
    )


def all_dates() -> list[dt.date]:
    first, last = dt.date(FIRST_YEAR, 1, 1), dt.date(LAST_YEAR, 12, 31)
    return [first + dt.timedelta(days=offset) for offset in range((last - first).days + 1)]


def make_datasets(seed: int) -> tuple[list[Example], list[Example]]:
    """Return (train, held_out) with no date, and so no input string, in both."""
    rng = random.Random(seed)
    dates = all_dates()
    held_out_dates = rng.sample(dates, HELD_OUT_SIZE)
    held_out = [Example(render_date(date, rng.choice(DATE_FORMS)), date.isoformat())
                for date in held_out_dates]

    # Training draws (date, form) pairs from the remaining dates until it has
    # TRAIN_SIZE distinct input strings. Some pairs render alike ("May" is both the
    # full name and the abbreviation), which the set removes.
    excluded = set(held_out_dates)
    train_dates = [date for date in dates if date not in excluded]
    seen: dict[str, str] = {}
    while len(seen) < TRAIN_SIZE:
        date = rng.choice(train_dates)
        seen.setdefault(render_date(date, rng.choice(DATE_FORMS)), date.isoformat())
    train = [Example(text, iso) for text, iso in seen.items()]
    return train, held_out


def write_jsonl(path: Path, examples: list[Example]) -> None:
    lines = [json.dumps({"input": ex.input, "expected": ex.expected}) for ex in examples]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------

def build_tokenizer(padding_side: str) -> PreTrainedTokenizerFast:
    """Build a character-level tokenizer over printable ASCII.

    The task needs only letters, digits, space, comma, '-', '=' and '>', but any other
    printable ASCII character also gets its own token, so that a prompt a person types
    decodes back unchanged instead of collapsing into ``<unk>``.
    """
    characters = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    vocab = {token: index for index, token in enumerate([PAD, EOS, UNK, *characters])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    # Fuse joins tokens without separators. The default decoder would put a space
    # between every two characters.
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, eos_token=EOS, unk_token=UNK,
        clean_up_tokenization_spaces=False, padding_side=padding_side,
        model_max_length=MAX_POSITIONS,
    )


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------
# Models and batches
# ---------------------------------------------------------------------------

def build_t5(tokenizer: PreTrainedTokenizerBase) -> T5ForConditionalGeneration:
    config = T5Config(
        vocab_size=len(tokenizer), d_model=128, d_kv=32, d_ff=256, num_layers=2,
        num_decoder_layers=2, num_heads=4, dropout_rate=0.0,
        relative_attention_max_distance=MAX_POSITIONS,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        # T5 starts decoding from the pad token.
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5ForConditionalGeneration(config)


def build_gpt2(tokenizer: PreTrainedTokenizerBase) -> GPT2LMHeadModel:
    # GPT-2 has no separate beginning-of-sequence token, so bos is eos, as in OpenAI's GPT-2
    # vocabulary where both are <|endoftext|>.
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=MAX_POSITIONS, n_embd=128, n_layer=3,
        n_head=4, n_inner=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows])


def t5_batch(tokenizer: PreTrainedTokenizerBase,
             examples: list[Example]) -> dict[str, torch.Tensor]:
    inputs = [encode(tokenizer, ex.input) for ex in examples]
    targets = [encode(tokenizer, ex.expected) + [tokenizer.eos_token_id] for ex in examples]
    input_ids = pad_rows(inputs, tokenizer.pad_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != tokenizer.pad_token_id).long(),
        # -100 is the label that the cross-entropy loss ignores.
        "labels": pad_rows(targets, -100),
    }


def gpt2_batch(tokenizer: PreTrainedTokenizerBase,
               examples: list[Example]) -> dict[str, torch.Tensor]:
    # The loss covers only the ISO date and eos, so the prompt's labels are -100.
    rows, label_rows = [], []
    for ex in examples:
        prompt = encode(tokenizer, GPT2_PROMPT_FORMAT.format(input=ex.input))
        target = encode(tokenizer, ex.expected) + [tokenizer.eos_token_id]
        rows.append(prompt + target)
        label_rows.append([-100] * len(prompt) + target)
    input_ids = pad_rows(rows, tokenizer.pad_token_id)
    attention_mask = pad_rows([[1] * len(row) for row in rows], 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask,
            "labels": pad_rows(label_rows, -100)}


BATCHERS = {"t5": t5_batch, "gpt2": gpt2_batch}


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

def learning_rate_factor(step: int, total_steps: int) -> float:
    # Linear warmup, then cosine decay to zero.
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, total_steps - WARMUP_STEPS)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def batches(examples: list[Example], rng: random.Random):
    """Yield batches of BATCH_SIZE forever, reshuffling each epoch."""
    order = list(examples)
    while True:
        rng.shuffle(order)
        for start in range(0, len(order) - BATCH_SIZE + 1, BATCH_SIZE):
            yield order[start:start + BATCH_SIZE]


def train(kind: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
          train_set: list[Example], settings: TrainingSettings) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=PEAK_LEARNING_RATE, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, settings.steps))
    stream = batches(train_set, random.Random(settings.seed))
    model.train()
    for step in range(settings.steps):
        loss = model(**BATCHERS[kind](tokenizer, next(stream))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 250 == 0 or step == settings.steps - 1:
            logger.info("%s step %s/%s loss %.4f", kind, step, settings.steps, loss.item())
    model.eval()


# ---------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------

def load_saved(kind: str, model_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    auto_class = AutoModelForSeq2SeqLM if kind == "t5" else AutoModelForCausalLM
    return auto_class.from_pretrained(model_dir).eval(), tokenizer


def generate_iso(kind: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 inputs: list[str]) -> list[str]:
    """Greedy-decode a completion for each input with the model's saved generation config."""
    prompts = inputs
    if kind == "gpt2":
        prompts = [GPT2_PROMPT_FORMAT.format(input=text) for text in inputs]
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**encoded)
    # A decoder-only model returns the prompt followed by the completion.
    completions = output if kind == "t5" else output[:, encoded["input_ids"].shape[1]:]
    return tokenizer.batch_decode(completions, skip_special_tokens=True)


def exact_match_accuracy(kind: str, model_dir: Path, held_out: list[Example]) -> float:
    model, tokenizer = load_saved(kind, model_dir)
    correct = 0
    for start in range(0, len(held_out), 100):
        chunk = held_out[start:start + 100]
        predictions = generate_iso(kind, model, tokenizer, [ex.input for ex in chunk])
        correct += sum(pred == ex.expected for pred, ex in zip(predictions, chunk))
    return correct / len(held_out)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------

def attach_generation_config(kind: str, model: PreTrainedModel,
                             tokenizer: PreTrainedTokenizerBase) -> None:
    settings = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "num_beams": 1,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if kind == "t5":
        settings["decoder_start_token_id"] = tokenizer.pad_token_id
    else:
        settings["bos_token_id"] = tokenizer.eos_token_id
    model.generation_config = GenerationConfig(**settings)


def save_model_dir(kind: str, model_dir: Path, model: PreTrainedModel,
                   tokenizer: PreTrainedTokenizerBase, held_out: list[Example]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    attach_generation_config(kind, model, tokenizer)
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    write_jsonl(model_dir / "held_out.jsonl", held_out)


def write_report(kind: str, model_dir: Path, report: dict) -> None:
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    (model_dir / "training_report.json").write_text(text, encoding="utf-8")
    (model_dir / "README.md").write_text(render_readme(kind, report), encoding="utf-8")


def render_readme(kind: str, report: dict) -> str:
    if kind == "t5":
        title, architecture = "Date normalizer (T5)", (
            "A tiny T5 encoder-decoder (`T5ForConditionalGeneration`, 2 encoder and 2 "
            "decoder layers, d_model 128).")
        prompt = (
            "The encoder input is the written date itself, with no prefix and no "
            "end-of-sequence token, for example `the 5th of March, 2021`. The decoder "
            "output is the ISO date followed by `</s>`, so the decoded text is `2021-03-05`.")
    else:
        title, architecture = "Date normalizer (GPT-2)", (
            "A tiny GPT-2 decoder-only model (`GPT2LMHeadModel`, 3 layers, n_embd 128, "
            f"{MAX_POSITIONS} positions).")
        prompt = (
            "The prompt is the written date, then a space, `=>` and one more space: "
            "`the 5th of March, 2021 => ` (note the trailing space). The completion is "
            "exactly the ISO date, `2021-03-05`, followed by `</s>`. Prompts without the "
            "trailing space are outside the training data.")
    return README_TEMPLATE.format(
        title=title, architecture=architecture, prompt=prompt,
        accuracy=100 * report["accuracy"], held_out_size=report["held_out_size"],
        train_size=report["train_size"], steps=report["steps"], seconds=report["seconds"],
        parameter_count=report["parameter_count"], command=report["command"],
        max_new_tokens=MAX_NEW_TOKENS, first_year=FIRST_YEAR, last_year=LAST_YEAR, forms="\n".join(
            f"- `{render_date(dt.date(2021, 3, 5), form)}`" for form in DATE_FORMS),
    )


README_TEMPLATE = """# {title}

A demo model for Tunedock, trained from scratch by `scripts/train_demo_models.py`.
It converts a written English date into ISO 8601 (`YYYY-MM-DD`).

{architecture} The tokenizer is character-level (one token per printable ASCII
character, plus `<pad>`, `</s>` and `<unk>`), so `decode(encode(text)) == text`.

## Prompt format

{prompt}

Greedy decoding with the saved `generation_config.json` (at most {max_new_tokens} new tokens)
is what the accuracy below measures.

## Task

Dates from {first_year}-01-01 to {last_year}-12-31 (leap days included), in these forms:

{forms}

Month names are English and capitalized, as above. Other forms, languages or cases
were not in the training data.

## Accuracy

Exact match on `held_out.jsonl` ({held_out_size} rows): **{accuracy:.1f}%**. No date in
the held-out set occurs in the training data in any form. Training used {train_size}
distinct inputs, {steps} steps, {seconds:.0f} s on CPU; the model has {parameter_count}
parameters. Details are in `training_report.json`.

## Reproduce

```
{command}
```
"""


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------

def train_one(kind: str, output_dir: Path, seed: int, steps: int | None,
              train_set: list[Example], held_out: list[Example], command: str) -> TrainingResult:
    """Train, save, reload and evaluate one model, and write its report and README."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer(padding_side="right" if kind == "t5" else "left")
    model = build_t5(tokenizer) if kind == "t5" else build_gpt2(tokenizer)
    settings = TrainingSettings(steps=steps or DEFAULT_STEPS[kind], seed=seed)
    started = time.monotonic()
    train(kind, model, tokenizer, train_set, settings)
    seconds = time.monotonic() - started

    model_dir = output_dir / (T5_DIR_NAME if kind == "t5" else GPT2_DIR_NAME)
    save_model_dir(kind, model_dir, model, tokenizer, held_out)
    accuracy = exact_match_accuracy(kind, model_dir, held_out)
    result = TrainingResult(accuracy, settings.steps, seconds, model.num_parameters())
    write_report(kind, model_dir, build_report(kind, result, seed, train_set, held_out, command))
    logger.info("%s: exact-match accuracy %.4f on %s held-out rows, %.0f s, saved to %s",
                kind, accuracy, len(held_out), seconds, model_dir)
    return result


def build_report(kind: str, result: TrainingResult, seed: int, train_set: list[Example],
                 held_out: list[Example], command: str) -> dict:
    report = {
        "task": "normalize a written English date to ISO 8601 (YYYY-MM-DD)",
        "architecture": "T5ForConditionalGeneration" if kind == "t5" else "GPT2LMHeadModel",
        "accuracy": result.accuracy,
        "held_out_size": len(held_out),
        "train_size": len(train_set),
        "seed": seed,
        "steps": result.steps,
        "batch_size": BATCH_SIZE,
        "seconds": round(result.seconds, 1),
        "parameter_count": result.parameter_count,
        "torch_threads": torch.get_num_threads(),
        "command": command,
        # Template that turns a held-out input into the prompt the model was trained on.
        "prompt_format": "{input}" if kind == "t5" else GPT2_PROMPT_FORMAT,
    }
    return report


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR,
                        help="directory that receives one subdirectory per model "
                             "(default: %(default)s)")
    parser.add_argument("--only", choices=("t5", "gpt2"),
                        help="train only this model (default: both)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for data generation, initialization and batch order "
                             "(default: %(default)s)")
    parser.add_argument("--steps", type=int,
                        help="optimizer steps for each model (default: "
                             f"{DEFAULT_STEPS['t5']} for t5, {DEFAULT_STEPS['gpt2']} for gpt2)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    transformers.utils.logging.disable_progress_bar()
    command = shlex.join(["python", "scripts/train_demo_models.py",
                          *(sys.argv[1:] if argv is None else argv)])

    # Seeded and deterministic: the same seed gives the same weights on the same build.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    train_set, held_out = make_datasets(args.seed)
    logger.info("%s training inputs, %s held-out inputs", len(train_set), len(held_out))
    kinds = [args.only] if args.only else ["t5", "gpt2"]
    results = {kind: train_one(kind, args.output_dir, args.seed, args.steps, train_set, held_out,
                                   command)
               for kind in kinds}
    for kind, result in results.items():
        logger.info("%s accuracy %.4f", kind, result.accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
