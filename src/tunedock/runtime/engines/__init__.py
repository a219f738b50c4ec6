"""Inference engines of the model server; ``create_engine`` picks one by name."""

from __future__ import annotations

from tunedock.runtime.engines.base import Engine, ModelLoadFailed
from tunedock.runtime.engines.batching_engine import BatchingOptions

AVAILABLE_ENGINES = ("transformers", "ctranslate2")


def create_engine(name: str, options: BatchingOptions, threads: int | None = None,
                  compute_type: str | None = None) -> Engine:
    """Create the engine called ``name``, or raise ModelLoadFailed if this build lacks it.

    ``compute_type`` is the ctranslate2 engine's quantization; the transformers engine
    runs the weights as stored and rejects any other value.
    """
    # Each engine is imported only when chosen: transformers brings torch, which takes
    # seconds to import, and the ctranslate2 engine's process must not load torch at all.
    if name == "transformers":
        if compute_type not in (None, "none"):
            raise ModelLoadFailed(f"the transformers engine runs weights as stored; quantization "
                                  f"{compute_type!r} is not supported by it, use 'none'")
        from tunedock.runtime.engines.transformers_engine import TransformersEngine

        return TransformersEngine(options, threads=threads)
    if name == "ctranslate2":
        from tunedock.runtime.engines.ctranslate2_engine import CTranslate2Engine

        return CTranslate2Engine(options, threads=threads, compute_type=compute_type)
    raise ModelLoadFailed(
        f"engine {name!r} is not available in this build of the model server; "
        f"available engines: {', '.join(AVAILABLE_ENGINES)}"
    )
