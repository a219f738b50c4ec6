"""Safetensors headers, read to count parameters without loading any tensor data.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of
UTF-8 JSON that map each tensor name to its dtype, shape and byte offsets, then the tensor
data. The optional ``__metadata__`` entry maps strings to strings and describes no tensor.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tunedock.errors import InvalidModelDirectory

logger = logging.getLogger(__name__)

HEADER_LENGTH_BYTES = 8
# The safetensors crate rejects longer headers (MAX_HEADER_SIZE in safetensors/src/tensor.rs).
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"

# Bits per element of each dtype code in the safetensors format. F4 and F6 values are
# packed, so a tensor's byte length is element count * bits / 8.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E5M2FNUZ": 8,
    "F8_E4M3FNUZ": 8,
    "F8_E8M0": 8,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "I64": 64,
    "U64": 64,
    "F64": 64,
    "C64": 64,
}


class SafetensorsHeaderError(ValueError):
    """A safetensors header that is truncated, not JSON, or inconsistent with the file."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as the header describes it; offsets are relative to the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def element_count(self) -> int:
        return math.prod(self.shape)


def read_safetensors_header(path: Path) -> list[TensorEntry]:
    """Read and validate the header of one safetensors file.

    Raises SafetensorsHeaderError when the header is corrupt or does not match the file
    size (a truncated download, for example), and OSError when the file cannot be read.
    """
    with path.open("rb") as file:
        file_size = os.fstat(file.fileno()).st_size
        header_length = _read_header_length(file, file_size)
        header = _decode_header(file.read(header_length))

    entries = [_parse_entry(name, value) for name, value in header.items() if name != METADATA_KEY]
    _check_data_layout(entries, data_size=file_size - HEADER_LENGTH_BYTES - header_length)
    return entries


def count_safetensors_parameters(files: Iterable[Path]) -> int:
    """Sum the element counts of all tensors in the given safetensors files.

    Only the headers are read. A corrupt header raises InvalidModelDirectory with code
    ``weights_unreadable``.
    """
    total = 0
    for path in files:
        try:
            entries = read_safetensors_header(path)
        except (SafetensorsHeaderError, OSError) as exc:
            raise InvalidModelDirectory(
                f"Weights file {path} is not a readable safetensors file: {exc}. "
                "Download or save the weights again, then retry.",
                code="weights_unreadable",
            ) from exc
        file_total = sum(entry.element_count for entry in entries)
        logger.debug("Read %d tensors with %d parameters from %s", len(entries), file_total, path)
        total += file_total
    return total


def _read_header_length(file: BinaryIO, file_size: int) -> int:
    prefix = file.read(HEADER_LENGTH_BYTES)
    if len(prefix) < HEADER_LENGTH_BYTES:
        raise SafetensorsHeaderError(
            f"the file is {file_size} bytes, shorter than the {HEADER_LENGTH_BYTES}-byte header length"
        )
    (header_length,) = struct.unpack("<Q", prefix)
    if header_length > MAX_HEADER_BYTES:
        raise SafetensorsHeaderError(
            f"the header length {header_length} exceeds the safetensors maximum of {MAX_HEADER_BYTES} bytes"
        )
    if HEADER_LENGTH_BYTES + header_length > file_size:
        raise SafetensorsHeaderError(
            f"the header length {header_length} runs past the end of the {file_size}-byte file"
        )
    return header_length


def _decode_header(header_bytes: bytes) -> dict[str, Any]:
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise SafetensorsHeaderError(f"the header is not UTF-8 (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise SafetensorsHeaderError(
            f"the header is not valid JSON ({exc.msg} at character {exc.pos})"
        ) from exc
    if not isinstance(header, dict):
        raise SafetensorsHeaderError(f"the header is a JSON {type(header).__name__}, not an object")
    return header


def _parse_entry(name: str, value: Any) -> TensorEntry:
    if not isinstance(value, dict):
        raise SafetensorsHeaderError(f"the entry of tensor {name!r} is not a JSON object")
    dtype = value.get("dtype")
    shape = value.get("shape")
    offsets = value.get("data_offsets")
    if not isinstance(dtype, str):
        raise SafetensorsHeaderError(f"tensor {name!r} has no dtype string")
    if not _is_list_of_counts(shape):
        raise SafetensorsHeaderError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not _is_list_of_counts(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise SafetensorsHeaderError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    return TensorEntry(name=name, dtype=dtype, shape=tuple(shape), data_offsets=(offsets[0], offsets[1]))


def _is_list_of_counts(value: Any) -> bool:
    # bool is a subclass of int, but true/false is never a dimension or an offset.
    return isinstance(value, list) and all(
        isinstance(item, int) and not isinstance(item, bool) and item >= 0 for item in value
    )


def _check_data_layout(entries: list[TensorEntry], data_size: int) -> None:
    # Like the safetensors crate, require tensors to tile the data section without gaps,
    # each exactly as long as its shape and dtype need. A truncated file fails the last check.
    position = 0
    for entry in sorted(entries, key=lambda item: item.data_offsets):
        start, end = entry.data_offsets
        if start != position:
            raise SafetensorsHeaderError(
                f"tensor {entry.name!r} starts at byte {start} of the data, expected {position}"
            )
        bits = DTYPE_BITS.get(entry.dtype)
        # NOTE: a dtype code newer than this table is accepted without a length check.
        if bits is not None and entry.element_count * bits != (end - start) * 8:
            raise SafetensorsHeaderError(
                f"tensor {entry.name!r} ({entry.dtype}, shape {list(entry.shape)}) "
                f"spans {end - start} bytes, which does not match its shape and dtype"
            )
        position = end
    if position != data_size:
        raise SafetensorsHeaderError(
            f"the header describes {position} bytes of tensor data but the file contains {data_size}"
        )
