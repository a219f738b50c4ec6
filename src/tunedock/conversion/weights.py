"""Conversion of a Hugging Face model directory to CTranslate2 weights, with a cache.

A converted directory is kept under ``cache_dir`` in a folder named after the sha256
of the model files, the quantization and the CTranslate2 major version, so a redeploy
of the same files with the same quantization reuses it. A folder appears under its
final name only once it is complete, and a lock file keeps two deploys from converting
the same weights at the same time.

The conversion itself runs in a child process (``python -m tunedock.conversion``),
because it loads the whole model with torch: running out of memory there fails the
deploy with a message instead of taking down the control plane.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tunedock.catalog.fingerprint import directory_hash
from tunedock.catalog.inspection import is_adapter_directory
from tunedock.conversion.errors import ConversionFailed
from tunedock.conversion.locking import locked
from tunedock.conversion.merging import merge_adapter
from tunedock.runtime.engines.converted_weights import MANIFEST_FILE

logger = logging.getLogger(__name__)

CTRANSLATE2_FORMATS = ("causal-lm", "seq2seq-lm")
# Deploy quantization values the transformers engine runs, by device type: the torch dtype
# its weights load in, or "none" for float32 on a CPU and the stored dtype on CUDA.
TRANSFORMERS_QUANTIZATIONS = {"cpu": ("none", "float32", "bfloat16"),
                              "cuda": ("none", "float32", "float16", "bfloat16")}
# Deploy quantization values the ctranslate2 engine runs; "none" keeps the stored precision.
CTRANSLATE2_QUANTIZATIONS = ("none", "int8", "int8_float32", "int16", "float32", "int8_float16", "float16",
                             "int8_bfloat16", "bfloat16")
# Lines of the converter's output quoted in a failure message.
_FAILURE_TAIL_LINES = 5

ProgressCallback = Callable[[str], None]


def prepare_weights(model_path: str | Path, model_format: str, engine: str, quantization: str,
                    cache_dir: str | Path, on_progress: ProgressCallback | None = None,
                    device: str = "cpu", base_model_path: str | Path | None = None,
                    files_hash: str | None = None) -> Path:
    """Return the directory the model server of ``engine`` loads, converting the weights if needed.

    Blocks for as long as a conversion takes, so call it from a worker thread.
    ``on_progress`` receives one sentence per step, on the calling thread. Raise
    ConversionFailed when the engine cannot run the model with this quantization on
    ``device`` (cpu, cuda or cuda:<index>), or when the conversion fails.

    A LoRA adapter directory is first merged into its base, ``base_model_path``, and the
    merged directory (cached under ``cache_dir`` too) is then prepared like a full model.
    ``files_hash`` is the ``directory_hash`` of ``model_path`` when the caller has it, so
    that large weights are not read twice.
    """
    report = on_progress or (lambda message: None)
    source = Path(model_path).resolve()
    _check_request(model_format, engine, quantization, device)
    if is_adapter_directory(source):
        if base_model_path is None:
            raise ConversionFailed(f"{source} is a LoRA adapter, and no base model directory was given to "
                                   "merge it into; register the adapter with its base model.")
        source = merge_adapter(source, Path(base_model_path).resolve(), model_format, Path(cache_dir), report)
        files_hash = None
    if engine == "transformers":
        return source

    if files_hash is None:
        report(f"Hashing the model files in {source}")
        files_hash = directory_hash(source)
    target = Path(cache_dir) / _cache_name(files_hash, quantization)
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.with_name(target.name + ".lock")):
        if (target / MANIFEST_FILE).is_file():
            report(f"Reusing the {quantization} CTranslate2 weights converted earlier in {target}")
            return target
        _convert(source, model_format, quantization, files_hash, target, report)
    return target


def _check_request(model_format: str, engine: str, quantization: str, device: str) -> None:
    if engine == "transformers":
        allowed = TRANSFORMERS_QUANTIZATIONS.get(device.partition(":")[0], ("none",))
        if quantization not in allowed:
            raise ConversionFailed(f"The transformers engine on {device} runs quantization {', '.join(allowed)}, "
                                   f"not {quantization!r}; choose one of those or the ctranslate2 engine.")
        return
    if engine != "ctranslate2":
        raise ConversionFailed(f"Engine {engine!r} has no weights preparation; use transformers or ctranslate2.")
    _check_ctranslate2_request(model_format, quantization, device)


def _check_ctranslate2_request(model_format: str, quantization: str, device: str) -> None:
    import ctranslate2

    if model_format not in CTRANSLATE2_FORMATS:
        raise ConversionFailed(f"The ctranslate2 engine serves {' and '.join(CTRANSLATE2_FORMATS)} models, "
                               f"not {model_format}; deploy this model with the transformers engine.")
    if quantization not in CTRANSLATE2_QUANTIZATIONS:
        raise ConversionFailed(f"Quantization {quantization!r} is not one that ctranslate2 runs; use one of "
                               f"{', '.join(CTRANSLATE2_QUANTIZATIONS)}.")
    device_type = device.partition(":")[0]
    try:
        supported = ctranslate2.get_supported_compute_types(device_type)
    except RuntimeError as error:
        raise ConversionFailed(f"ctranslate2 cannot use device {device!r} on this machine: {error}") from error
    if quantization != "none" and quantization not in supported:
        raise ConversionFailed(f"Quantization {quantization!r} is not supported by ctranslate2 on this machine's "
                               f"{device_type}; supported here: {', '.join(sorted(supported))}.")


def _cache_name(files_hash: str, quantization: str) -> str:
    import ctranslate2

    digest = files_hash.split(":", 1)[-1][:32]
    major_version = ctranslate2.__version__.split(".", 1)[0]
    return f"ctranslate2-v{major_version}-{quantization}-{digest}"


def _convert(source: Path, model_format: str, quantization: str, files_hash: str, target: Path,
             report: ProgressCallback) -> None:
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    report(f"Converting {source.name} to CTranslate2 with quantization {quantization}")
    started = time.monotonic()
    command = [sys.executable, "-m", "tunedock.conversion", "--model-path", str(source), "--format", model_format,
               "--quantization", quantization, "--files-hash", files_hash, "--output", str(staging)]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                       TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=environment,
                            check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = " ".join(line.strip() for line in result.stderr.strip().splitlines()[-_FAILURE_TAIL_LINES:])
        logger.error("Converting %s failed with status %s:\n%s", source, result.returncode, result.stderr)
        raise ConversionFailed(f"Converting {source} to CTranslate2 ({quantization}) failed: {tail}")
    os.replace(staging, target)
    seconds = time.monotonic() - started
    logger.info("Converted %s to CTranslate2 (%s) in %s in %.1f s", source, quantization, target, seconds)
    report(f"Converted to CTranslate2 ({quantization}) in {seconds:.1f} s")
