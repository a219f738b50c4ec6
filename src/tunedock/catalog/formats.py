"""Model formats that Tunedock serves, and the tables that map a config.json to one.

The format decides how a model server loads and calls the model: ``causal-lm`` continues
text, ``seq2seq-lm`` turns input text into output text with an encoder-decoder, and
``embedding`` turns text into a vector. The model-type names below are the ``model_type``
values of Hugging Face transformers 5.x configs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CAUSAL_LM = "causal-lm"
SEQ2SEQ_LM = "seq2seq-lm"
EMBEDDING = "embedding"

FORMAT_DESCRIPTIONS: dict[str, str] = {
    CAUSAL_LM: "decoder-only language models (*ForCausalLM, GPT2LMHeadModel)",
    SEQ2SEQ_LM: "encoder-decoder text models (*ForConditionalGeneration of T5, BART, Pegasus, MarianMTModel)",
    EMBEDDING: "sentence-transformers directories and encoder models (BertModel, RobertaModel, MPNetModel)",
}

# Architectures whose format their class-name suffix does not show.
ARCHITECTURE_FORMATS: dict[str, str] = {
    "GPT2LMHeadModel": CAUSAL_LM,
    "OpenAIGPTLMHeadModel": CAUSAL_LM,
    "CTRLLMHeadModel": CAUSAL_LM,
    "XLNetLMHeadModel": CAUSAL_LM,
    "T5WithLMHeadModel": SEQ2SEQ_LM,  # older T5 configs, from before the T5ForConditionalGeneration name
    "MarianMTModel": SEQ2SEQ_LM,
    "EncoderDecoderModel": SEQ2SEQ_LM,
    "BertModel": EMBEDDING,
    "RobertaModel": EMBEDDING,
    "XLMRobertaModel": EMBEDDING,
    "XLMRobertaXLModel": EMBEDDING,
    "MPNetModel": EMBEDDING,
    "DistilBertModel": EMBEDDING,
    "AlbertModel": EMBEDDING,
    "ElectraModel": EMBEDDING,
    "DebertaModel": EMBEDDING,
    "DebertaV2Model": EMBEDDING,
    "CamembertModel": EMBEDDING,
    "ModernBertModel": EMBEDDING,
}

CAUSAL_LM_SUFFIX = "ForCausalLM"
# Vision-language models use this suffix too, so it means seq2seq-lm only for the text
# encoder-decoder model types below or a config with is_encoder_decoder.
CONDITIONAL_GENERATION_SUFFIX = "ForConditionalGeneration"

SEQ2SEQ_MODEL_TYPES = frozenset({
    "t5", "mt5", "umt5", "longt5", "t5gemma", "switch_transformers",
    "bart", "mbart", "plbart", "mvp", "pegasus", "pegasus_x", "bigbird_pegasus",
    "marian", "led", "blenderbot", "blenderbot-small", "fsmt", "prophetnet",
    "m2m_100", "nllb-moe", "encoder-decoder",
})

# Encoder-decoder models whose encoder reads audio or images. is_encoder_decoder alone
# must not make them seq2seq-lm.
NON_TEXT_ENCODER_DECODER_TYPES = frozenset({
    "whisper", "speech_to_text", "speech-encoder-decoder", "speecht5", "moonshine",
    "pop2piano", "seamless_m4t", "seamless_m4t_v2", "vision-encoder-decoder", "pix2struct",
})

# Used only when config.json lists no architectures.
MODEL_TYPE_FORMATS: dict[str, str] = {
    **{model_type: SEQ2SEQ_LM for model_type in SEQ2SEQ_MODEL_TYPES},
    **{model_type: CAUSAL_LM for model_type in (
        "gpt2", "gpt_neo", "gpt_neox", "gptj", "gpt_bigcode", "opt", "bloom", "falcon",
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2",
        "starcoder2",
    )},
    **{model_type: EMBEDDING for model_type in (
        "bert", "roberta", "xlm-roberta", "xlm-roberta-xl", "mpnet", "distilbert", "albert",
        "electra", "deberta", "deberta-v2", "camembert", "modernbert",
    )},
}

# Files that make up a tokenizer. A model directory needs at least one complete set.
TOKENIZER_FILE_SETS: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("tokenizer.model",),
    ("vocab.txt",),
    ("vocab.json", "merges.txt"),
    ("spiece.model",),
    ("sentencepiece.bpe.model",),
)

# sentence-transformers Pooling config keys that Tunedock serves, and the mode each selects.
POOLING_MODE_KEYS: dict[str, str] = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
}
UNSUPPORTED_POOLING_MODE_KEYS = (
    "pooling_mode_mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens",
    "pooling_mode_lasttoken",
)

# Class names in the "type" of modules.json entries, e.g. "sentence_transformers.models.Pooling".
POOLING_MODULE_CLASS = "Pooling"
NORMALIZE_MODULE_CLASS = "Normalize"


@dataclass(frozen=True)
class FormatMatch:
    format: str
    architecture: str  # the architectures entry that decided, or "" when none was listed


def detect_format(config: Mapping[str, Any], has_sentence_transformers_modules: bool) -> FormatMatch | None:
    """Return the format of a model from its config.json, or None when no rule matches.

    A sentence-transformers directory (one with modules.json) is always an embedding model.
    Otherwise the first entry of ``architectures`` that a rule matches decides, and
    ``model_type`` decides only when ``architectures`` is empty.
    """
    architectures = list_architectures(config)
    if has_sentence_transformers_modules:
        return FormatMatch(EMBEDDING, architectures[0] if architectures else "")

    for architecture in architectures:
        format_ = _format_of_architecture(architecture, config)
        if format_ is not None:
            return FormatMatch(format_, architecture)
    if architectures:
        return None

    return _format_of_model_type(config)


def list_architectures(config: Mapping[str, Any]) -> list[str]:
    architectures = config.get("architectures")
    if not isinstance(architectures, list):
        return []
    return [name for name in architectures if isinstance(name, str)]


def read_model_type(config: Mapping[str, Any]) -> str:
    model_type = config.get("model_type")
    return model_type if isinstance(model_type, str) else ""


def _format_of_architecture(architecture: str, config: Mapping[str, Any]) -> str | None:
    if architecture in ARCHITECTURE_FORMATS:
        return ARCHITECTURE_FORMATS[architecture]
    if architecture.endswith(CAUSAL_LM_SUFFIX):
        return CAUSAL_LM
    if architecture.endswith(CONDITIONAL_GENERATION_SUFFIX) and _is_text_encoder_decoder(config):
        return SEQ2SEQ_LM
    return None


def _format_of_model_type(config: Mapping[str, Any]) -> FormatMatch | None:
    model_type = read_model_type(config)
    if _is_text_encoder_decoder(config):
        return FormatMatch(SEQ2SEQ_LM, "")
    if model_type in MODEL_TYPE_FORMATS:
        return FormatMatch(MODEL_TYPE_FORMATS[model_type], "")
    return None


def _is_text_encoder_decoder(config: Mapping[str, Any]) -> bool:
    model_type = read_model_type(config)
    if model_type in NON_TEXT_ENCODER_DECODER_TYPES:
        return False
    return model_type in SEQ2SEQ_MODEL_TYPES or config.get("is_encoder_decoder") is True


def describe_formats() -> str:
    """Return the supported formats as one line for error messages."""
    return "; ".join(f"{name}: {description}" for name, description in FORMAT_DESCRIPTIONS.items())
