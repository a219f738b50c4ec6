"""Drawing one token from logits with numpy, with the transformers engine's filters and order.

Temperature first, then top-k, then top-p (nucleus), then a draw from ``rng``; see
``sampling`` for the torch version that the transformers engine uses.
"""

from __future__ import annotations

import numpy as np

from tunedock.runtime.engines.base import GenerationParams


def sample_token(logits: np.ndarray, params: GenerationParams, rng: np.random.Generator) -> int:
    """Return a token id drawn from ``logits`` (vocabulary,) as ``params`` ask."""
    scores = logits.astype(np.float64) / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        threshold = np.partition(scores, -params.top_k)[-params.top_k]
        scores = np.where(scores < threshold, -np.inf, scores)
    if params.top_p < 1.0:
        order = np.argsort(-scores, kind="stable")
        probabilities = _softmax(scores[order])
        # Drop a token when the more likely tokens already reach top_p; the first always stays.
        drop = (np.cumsum(probabilities) - probabilities) >= params.top_p
        drop[0] = False
        scores[order[drop]] = -np.inf
    return int(rng.choice(scores.shape[-1], p=_softmax(scores)))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max())
    return shifted / shifted.sum()
