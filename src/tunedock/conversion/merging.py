"""Merging of a LoRA adapter into its base model at deploy time, with a cache.

The merged model is kept under ``cache_dir`` in a folder named after the sha256 of the
adapter files and of the base model files, so a redeploy of the same adapter on the same
base reuses it. As for conversions, a folder gets its final name only once complete, and
a lock file keeps two deploys from merging the same pair at the same time.

The merge runs in a child process (``python -m tunedock.conversion.merger``), because it
loads the whole base model with torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tunedock.catalog.fingerprint import directory_hash
from tunedock.conversion.errors import ConversionFailed
from tunedock.conversion.locking import locked

logger = logging.getLogger(__name__)

MERGE_MANIFEST_FILE = "tunedock-merge.json"
# Lines of the merge's output quoted in a failure message.
_FAILURE_TAIL_LINES = 5


def merge_adapter(adapter: Path, base: Path, model_format: str, cache_dir: Path,
                  report: Callable[[str], None]) -> Path:
    """Return a directory with ``adapter`` merged into ``base``, merging it unless cached.

    Raise ConversionFailed when the merge fails, with the reason from the merge's output.
    """
    report(f"Hashing the adapter files in {adapter} and the base model files in {base}")
    adapter_hash = directory_hash(adapter)
    base_hash = directory_hash(base)
    pair_digest = hashlib.sha256(f"{adapter_hash}\0{base_hash}".encode()).hexdigest()[:32]
    target = cache_dir / f"merged-{pair_digest}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with locked(target.with_name(target.name + ".lock")):
        if (target / MERGE_MANIFEST_FILE).is_file():
            report(f"Reusing the merge of adapter {adapter.name} into {base.name} made earlier in {target}")
            return target
        _merge(adapter, base, model_format, (adapter_hash, base_hash), target, report)
    return target


def _merge(adapter: Path, base: Path, model_format: str, hashes: tuple[str, str], target: Path,
           report: Callable[[str], None]) -> None:
    staging = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    report(f"Merging adapter {adapter.name} into base model {base.name}")
    started = time.monotonic()
    command = [sys.executable, "-m", "tunedock.conversion.merger", "--adapter-path", str(adapter),
               "--base-path", str(base), "--format", model_format, "--adapter-hash", hashes[0],
               "--base-hash", hashes[1], "--output", str(staging)]
    environment = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1",
                       TOKENIZERS_PARALLELISM="false")
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=environment,
                            check=False)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        tail = " ".join(line.strip() for line in result.stderr.strip().splitlines()[-_FAILURE_TAIL_LINES:])
        logger.error("Merging adapter %s into %s failed with status %s:\n%s", adapter, base, result.returncode,
                     result.stderr)
        raise ConversionFailed(f"Merging adapter {adapter} into base model {base} failed: {tail}")
    os.replace(staging, target)
    seconds = time.monotonic() - started
    logger.info("Merged adapter %s into %s in %s in %.1f s", adapter, base, target, seconds)
    report(f"Merged the adapter into the base model in {seconds:.1f} s")
