"""Inference engines of the model server; ``create_engine`` picks one by name."""

from __future__ import annotations

from tunedock.runtime.engines.base import Engine, ModelLoadFailed

AVAILABLE_ENGINES = ("transformers",)


def create_engine(name: str, threads: int | None = None) -> Engine:
    """Create the engine called ``name``, or raise ModelLoadFailed if this build lacks it."""
    if name != "transformers":
        raise ModelLoadFailed(
            f"engine {name!r} is not available in this build of the model server; "
            f"available engines: {', '.join(AVAILABLE_ENGINES)}"
        )

    # Imported here because it imports torch and transformers, which take seconds.
    from tunedock.runtime.engines.transformers_engine import TransformersEngine

    return TransformersEngine(threads=threads)
