"""Inference engines of the model server; ``create_engine`` picks one by name."""

from __future__ import annotations

from tunedock.runtime.engines.base import Engine, ModelLoadFailed
from tunedock.runtime.engines.batching_engine import BatchingOptions

AVAILABLE_ENGINES = ("transformers", "ctranslate2")


def create_engine(name: str, options: BatchingOptions, threads: int | None = None,
                  compute_type: str | None = None) -> Engine:
    """Create the engine called ``name``, or raise ModelLoadFailed if this build lacks it.

    ``compute_type`` is the deployment's quantization: a CTranslate2 compute type for the
    ctranslate2 engine, and the torch dtype to load the weights in for the transformers
    engine, whose ``load`` raises ModelLoadFailed when the device cannot run it.
    """
    # Each engine is imported only when chosen: transformers brings torch, which takes
    # seconds to import, and the ctranslate2 engine's process must not load torch at all.
    if name == "transformers":
        from tunedock.runtime.engines.transformers_engine import TransformersEngine

        return TransformersEngine(options, threads=threads, quantization=compute_type)
    if name == "ctranslate2":
        from tunedock.runtime.engines.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine(options, threads=threads, compute_type=compute_type)
    raise ModelLoadFailed(
        f"engine {name!r} is not available in this build of the model server; "
        f"available engines: {', '.join(AVAILABLE_ENGINES)}"
    )
