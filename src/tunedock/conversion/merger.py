"""Child process of ``merge_adapter``: merge one LoRA adapter into its base model with PEFT.

Usage: ``python -m tunedock.conversion.merger --adapter-path DIR --base-path DIR --format
causal-lm --adapter-hash sha256:... --base-hash sha256:... --output NEW_DIR``. On failure the
last line of stderr gives the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from tunedock.catalog import formats
from tunedock.conversion.merging import MERGE_MANIFEST_FILE

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunedock.conversion.merger")
    for option in ("--adapter-path", "--base-path", "--format", "--adapter-hash", "--base-hash", "--output"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        merge(Path(args.adapter_path), Path(args.base_path), args.format, Path(args.output))
        _write_manifest(args, Path(args.output))
    except Exception as error:  # The parent shows the last line of stderr as the reason.
        logger.exception("Merge failed")
        sys.stderr.write(f"{type(error).__name__}: {error}\n")
        return 1
    return 0


def merge(adapter: Path, base: Path, model_format: str, output: Path) -> None:
    """Load ``base``, apply the LoRA weights of ``adapter``, fold them in and save a full model to ``output``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    model_classes = {formats.CAUSAL_LM: AutoModelForCausalLM, formats.SEQ2SEQ_LM: AutoModelForSeq2SeqLM}
    if model_format not in model_classes:
        raise ValueError(f"adapters can be merged into {' and '.join(model_classes)} models, not {model_format}")
    # dtype "auto" keeps the precision the base was saved in.
    base_model = model_classes[model_format].from_pretrained(base, dtype="auto")
    merged = PeftModel.from_pretrained(base_model, adapter).merge_and_unload()
    merged.save_pretrained(output)

    # An adapter trained with added tokens ships its own tokenizer, which then wins.
    tokenizer_source = adapter if _has_tokenizer(adapter) else base
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(output)


def _has_tokenizer(directory: Path) -> bool:
    return any(all((directory / name).is_file() for name in file_set) for file_set in formats.TOKENIZER_FILE_SETS)


def _write_manifest(args: argparse.Namespace, output: Path) -> None:
    import peft
    import transformers

    manifest = {"adapter_path": args.adapter_path, "adapter_hash": args.adapter_hash,
                "base_path": args.base_path, "base_hash": args.base_hash,
                "peft_version": peft.__version__, "transformers_version": transformers.__version__}
    (output / MERGE_MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
