"""Train the demo LoRA adapter over the GPT-2 date normalizer: written dates to DD/MM/YYYY.

The base demo model turns "March 5, 2021 => " into "2021-03-05". The adapter keeps the
prompt format and the inputs, and teaches the European day/month/year form instead:
"05/03/2021". It uses the data and held-out dates of ``train_demo_models.py`` with the
same seed, so no held-out date occurs in the training data of either the base or the
adapter. Only LoRA matrices on the attention projection ``c_attn`` are trained.

Run from the repository root, after the base model exists (CPU only):

    .venv/bin/python scripts/train_demo_adapter.py [--seed 0] [--steps 500]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import random
import shlex
import sys
import time
from pathlib import Path

import train_demo_models as demo  # the sibling script; Python puts scripts/ on sys.path

import torch  # noqa: E402
import transformers  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel  # noqa: E402

logger = logging.getLogger(__name__)

ADAPTER_DIR_NAME = "date-normalizer-gpt2-dmy-lora"
BASE_DIR = demo.DEFAULT_OUTPUT_DIR / demo.GPT2_DIR_NAME
DEFAULT_STEPS = 500
WARMUP_STEPS = 50
PEAK_LEARNING_RATE = 5e-3
LORA_RANK = 8
LORA_ALPHA = 16
TARGET_MODULES = ["c_attn"]


def european_date(iso_date: str) -> str:
    return dt.date.fromisoformat(iso_date).strftime("%d/%m/%Y")


def make_datasets(seed: int) -> tuple[list[demo.Example], list[demo.Example]]:
    """Return the base model's train and held-out inputs, relabeled with DD/MM/YYYY outputs."""
    train_set, held_out = demo.make_datasets(seed)
    relabel = [demo.Example(ex.input, european_date(ex.expected)) for ex in train_set]
    return relabel, [demo.Example(ex.input, european_date(ex.expected)) for ex in held_out]


def build_lora_model(seed: int) -> PreTrainedModel:
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(BASE_DIR)
    # GPT-2 stores attention weights as Conv1D (in_features x out_features), hence fan_in_fan_out.
    config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=TARGET_MODULES,
                        fan_in_fan_out=True, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(base, config)


def train(model: PreTrainedModel, tokenizer: transformers.PreTrainedTokenizerBase,
          train_set: list[demo.Example], steps: int, seed: int) -> None:
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=PEAK_LEARNING_RATE, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, steps))
    stream = demo.batches(train_set, random.Random(seed))
    model.train()
    for step in range(steps):
        loss = model(**demo.gpt2_batch(tokenizer, next(stream))).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == steps - 1:
            logger.info("adapter step %s/%s loss %.4f", step, steps, loss.item())
    model.eval()


def learning_rate_factor(step: int, total_steps: int) -> float:
    if step < WARMUP_STEPS:
        return (step + 1) / WARMUP_STEPS
    return max(0.0, (total_steps - step) / max(1, total_steps - WARMUP_STEPS))


def save_adapter(model: PeftModel, adapter_dir: Path) -> None:
    adapter_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(adapter_dir, safe_serialization=True)
    # PEFT records the base's absolute path on this machine; the directory name is what matters.
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = demo.GPT2_DIR_NAME
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def exact_match_accuracy(adapter_dir: Path, held_out: list[demo.Example]) -> float:
    """Reload the saved adapter, merge it into the base as a deploy does, and score greedy decoding."""
    base, tokenizer = demo.load_saved("gpt2", BASE_DIR)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().eval()
    correct = 0
    for start in range(0, len(held_out), 100):
        chunk = held_out[start:start + 100]
        predictions = demo.generate_iso("gpt2", merged, tokenizer, [ex.input for ex in chunk])
        correct += sum(prediction == ex.expected for prediction, ex in zip(predictions, chunk))
    return correct / len(held_out)


def write_report(adapter_dir: Path, report: dict) -> None:
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    (adapter_dir / "training_report.json").write_text(text, encoding="utf-8")
    (adapter_dir / "README.md").write_text(README_TEMPLATE.format(**report), encoding="utf-8")


README_TEMPLATE = """# Date normalizer, day/month/year (LoRA adapter over GPT-2)

A PEFT LoRA adapter for Tunedock's demo model `date-normalizer-gpt2`, trained by
`scripts/train_demo_adapter.py`. The base model writes a date as ISO 8601
(`2021-03-05`). With this adapter merged in, it writes the European day/month/year
form instead (`05/03/2021`).

LoRA rank {lora_rank} (alpha {lora_alpha}) on the attention projection `c_attn` of all
3 layers: {parameter_count} trainable parameters. The base weights are unchanged.

## Prompt format

The same as the base model: the written date, then a space, `=>` and one more space,
for example `March 5, 2021 => ` (note the trailing space). The completion is exactly
`05/03/2021`, followed by `</s>`. The inputs are the base model's written forms of dates
from 1950 to 2049.

## Registering

Register the base directory first, then this directory with `base_model` set to the
base model's name, slug or id (or to the base directory's path). Tunedock merges the
adapter into the base at deploy time.

## Accuracy

Exact match on `held_out.jsonl` ({held_out_size} rows), greedy decoding of the merged model:
**{accuracy_percent:.1f}%**. No held-out date occurs in the training data in any form.
Training took {steps} steps of batch size {batch_size}, {seconds:.0f} s on CPU
({torch_threads} threads). Details are in `training_report.json`.

## Reproduce

```
{command}
```
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=demo.DEFAULT_OUTPUT_DIR,
                        help=f"directory that receives {ADAPTER_DIR_NAME}/ (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed for data, LoRA initialization and batch order (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                        help="optimizer steps (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    args = parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    transformers.utils.logging.disable_progress_bar()
    random.seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(min(2, torch.get_num_threads()))

    train_set, held_out = make_datasets(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(BASE_DIR)
    model = build_lora_model(args.seed)
    parameter_count = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    started = time.monotonic()
    train(model, tokenizer, train_set, args.steps, args.seed)
    seconds = time.monotonic() - started

    adapter_dir = args.output_dir / ADAPTER_DIR_NAME
    save_adapter(model, adapter_dir)
    demo.write_jsonl(adapter_dir / "held_out.jsonl", held_out)
    accuracy = exact_match_accuracy(adapter_dir, held_out)
    write_report(adapter_dir, {
        "task": "rewrite a written English date as DD/MM/YYYY",
        "base_model": demo.GPT2_DIR_NAME, "lora_rank": LORA_RANK, "lora_alpha": LORA_ALPHA,
        "target_modules": TARGET_MODULES, "accuracy": accuracy, "accuracy_percent": 100 * accuracy,
        "held_out_size": len(held_out), "train_size": len(train_set), "seed": args.seed,
        "steps": args.steps, "batch_size": demo.BATCH_SIZE, "seconds": round(seconds, 1),
        "parameter_count": parameter_count, "torch_threads": torch.get_num_threads(),
        "command": shlex.join(["python", "scripts/train_demo_adapter.py", *arguments]),
        "prompt_format": demo.GPT2_PROMPT_FORMAT,
    })
    logger.info("adapter: exact-match accuracy %.4f on %s held-out rows, %.0f s, saved to %s",
                accuracy, len(held_out), seconds, adapter_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
