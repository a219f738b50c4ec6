"""The manifest that describes a model directory converted for the ctranslate2 engine.

``tunedock.conversion`` writes ``tunedock_weights.json`` next to the converted weights,
and the ctranslate2 engine reads it, because the converted ``config.json`` is
CTranslate2's own and no longer contains the facts of the original model that serving
needs. The converted directory also holds copies of the original tokenizer files,
``generation_config.json`` and the chat template.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from tunedock.runtime.engines.base import ModelLoadFailed

MANIFEST_FILE = "tunedock_weights.json"


@dataclass(frozen=True)
class ConvertedWeights:
    """What the conversion recorded about the original model and the converted weights.

    ``quantization`` is a CTranslate2 compute type, or ``none`` for the stored precision.
    ``context_length`` is None for models without a fixed limit, such as T5.
    """

    source_path: str
    source_hash: str
    model_format: str
    model_type: str
    quantization: str
    context_length: int | None
    end_token_ids: list[int]
    decoder_start_token_id: int | None
    ctranslate2_version: str

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, directory: Path) -> ConvertedWeights:
        path = directory / MANIFEST_FILE
        if not path.is_file():
            raise ModelLoadFailed(f"{directory} has no {MANIFEST_FILE}, so it is not a model directory converted "
                                  "for the ctranslate2 engine; deploy through the control plane, which converts it")
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError) as error:
            raise ModelLoadFailed(f"could not read {path}: {error}") from error
