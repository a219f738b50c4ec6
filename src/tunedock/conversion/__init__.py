"""Preparation of a model's weights for an engine, run by the control plane at deploy time.

``prepare_weights`` returns the directory that the model server of a deployment loads:
the model directory itself for the transformers engine, and a converted copy for the
ctranslate2 engine, cached by the content hash of the model files and the quantization.
"""

from tunedock.conversion.weights import ConversionFailed, prepare_weights

__all__ = ["ConversionFailed", "prepare_weights"]
