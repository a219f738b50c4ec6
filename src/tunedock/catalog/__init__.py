"""Catalog: inspection of local Hugging Face model directories before registration.

Only files are read. The control plane imports this package, so it must not import torch
or transformers.
"""

from tunedock.catalog.formats import CAUSAL_LM, EMBEDDING, SEQ2SEQ_LM
from tunedock.catalog.inspection import ModelInspection, inspect_model_directory
from tunedock.catalog.safetensors_header import count_safetensors_parameters
from tunedock.catalog.slugs import slugify

__all__ = [
    "CAUSAL_LM",
    "EMBEDDING",
    "SEQ2SEQ_LM",
    "ModelInspection",
    "count_safetensors_parameters",
    "inspect_model_directory",
    "slugify",
]
