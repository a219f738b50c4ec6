"""The conversion that runs in the child process: CTranslate2's converter plus the files serving needs."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunedock.runtime.engines.converted_weights import ConvertedWeights

logger = logging.getLogger(__name__)

# Files the ctranslate2 engine reads next to the weights, copied when the model has them.
SERVING_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
                 "chat_template.jinja", "chat_template.json")
# Tokenizers report a huge model_max_length (about 1e30) when they declare no limit.
_MAX_PLAUSIBLE_CONTEXT = 10_000_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunedock.conversion")
    for option in ("--model-path", "--format", "--quantization", "--files-hash", "--output"):
        parser.add_argument(option, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        convert(Path(args.model_path), args.format, args.quantization, args.files_hash, Path(args.output))
    except Exception as error:  # The parent shows the last line of stderr as the reason.
        logger.exception("Conversion failed")
        sys.stderr.write(f"{type(error).__name__}: {error}\n")
        return 1
    return 0


def convert(source: Path, model_format: str, quantization: str, files_hash: str, output: Path) -> None:
    """Convert ``source`` into ``output`` and write the files and manifest the ctranslate2 engine reads."""
    import ctranslate2
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    TransformersConverter(str(source)).convert(str(output), quantization=None if quantization == "none" else
                                               quantization, force=True)
    tokenizer = AutoTokenizer.from_pretrained(source)
    _copy_serving_files(source, output, tokenizer)
    _fill_missing_special_tokens(output / "config.json")

    config = AutoConfig.from_pretrained(source)
    generation = GenerationConfig.from_model_config(config)
    if (source / "generation_config.json").is_file():
        generation = GenerationConfig.from_pretrained(source)
    ConvertedWeights(
        source_path=str(source), source_hash=files_hash, model_format=model_format,
        model_type=str(config.model_type), quantization=quantization,
        context_length=_context_length(config, tokenizer, model_format),
        end_token_ids=_end_token_ids(generation, config, tokenizer),
        decoder_start_token_id=_int_or_none(getattr(generation, "decoder_start_token_id", None)
                                            or getattr(config, "decoder_start_token_id", None)),
        ctranslate2_version=ctranslate2.__version__,
    ).write(output)


def _copy_serving_files(source: Path, output: Path, tokenizer: Any) -> None:
    for name in SERVING_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, output / name)
    if not (output / "tokenizer.json").is_file():
        # A model that ships only a slow tokenizer gets tokenizer.json from transformers' conversion.
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"{source} has no tokenizer.json and transformers cannot make a fast tokenizer for it")
        tokenizer.backend_tokenizer.save(str(output / "tokenizer.json"))


def _fill_missing_special_tokens(config_path: Path) -> None:
    # CTranslate2 cannot load a config whose bos_token or unk_token is null, which its GPT-2
    # converter writes for tokenizers without such a token. Decoding a given prompt reads
    # neither, so another special token of the model is used in its place.
    config = json.loads(config_path.read_text(encoding="utf-8"))
    names = ("bos_token", "eos_token", "unk_token")
    known = [config[name] for name in names if config.get(name) is not None]
    missing = [name for name in names if name in config and config[name] is None]
    if missing and known:
        config.update({name: known[0] for name in missing})
        config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _context_length(config: Any, tokenizer: Any, model_format: str) -> int | None:
    limits = [getattr(config, "max_position_embeddings", None)]
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < _MAX_PLAUSIBLE_CONTEXT:
        limits.append(tokenizer_limit)
    valid = [limit for limit in limits if isinstance(limit, int) and limit > 0]
    return min(valid) if valid else None


def _end_token_ids(generation: Any, config: Any, tokenizer: Any) -> list[int]:
    for configured in (getattr(generation, "eos_token_id", None), getattr(config, "eos_token_id", None),
                       tokenizer.eos_token_id):
        if isinstance(configured, int):
            return [configured]
        if isinstance(configured, list) and configured:
            return [int(token_id) for token_id in configured]
    return []


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None
