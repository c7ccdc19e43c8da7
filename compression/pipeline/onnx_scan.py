"""Streaming structural validation of ONNX files, in constant memory.

`onnx.load` materialises the whole protobuf (and refuses files over 2 GiB), so an
upload is first walked here, directly on the protobuf wire format: the scanner
reads field keys and the few small values it needs, and seeks over everything
else (weights in raw_data are skipped without being read). It rejects what is
not a ModelProto and checks every tensor's external-data location, including
tensors inside node attributes, subgraphs, functions and training info, since
`onnx.load_external_data_for_model` follows all of them.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from compression.pipeline.errors import InvalidModelError

# Protobuf cannot parse a message of 2 GiB or more; onnx.load fails on such files.
PROTOBUF_LIMIT = 2**31 - 1

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_V, _L = frozenset({_VARINT}), frozenset({_LEN})
_PACKED_VARINT = frozenset({_VARINT, _LEN})
_PACKED_I32 = frozenset({_I32, _LEN})
_PACKED_I64 = frozenset({_I64, _LEN})
_FIXED_SIZE = {_I64: 8, _I32: 4}

_MAX_DEPTH = 64
_MAX_LOCATIONS = 100_000
_MAX_STRING = 64 * 1024
_EXTERNAL = 1
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum", "basepath"})

Spec = dict[int, tuple[frozenset[int], str | None]]

# Field tables from onnx.proto (onnx 1.23): number -> (wire types, child kind).
# A child kind names a message the scanner descends into; None means skip it.
# Every field number the schema defines is listed, so anything else is refused.
_SCHEMA: dict[str, Spec] = {
    "model": {
        1: (_V, None),  # ir_version
        2: (_L, None),  # producer_name
        3: (_L, None),  # producer_version
        4: (_L, None),  # domain
        5: (_V, None),  # model_version
        6: (_L, None),  # doc_string
        7: (_L, "graph"),
        8: (_L, "opset"),
        14: (_L, None),  # metadata_props
        20: (_L, "training"),
        25: (_L, "function"),
        26: (_L, None),  # configuration
    },
    "graph": {
        1: (_L, "node"),
        2: (_L, None),  # name
        5: (_L, "tensor"),  # initializer
        15: (_L, "sparse"),  # sparse_initializer
        **{n: (_L, None) for n in (10, 11, 12, 13, 14, 16)},
    },
    "tensor": {
        1: (_PACKED_VARINT, None),  # dims
        2: (_V, None),  # data_type
        3: (_L, None),  # segment
        4: (_PACKED_I32, None),  # float_data
        5: (_PACKED_VARINT, None),  # int32_data
        6: (_L, None),  # string_data
        7: (_PACKED_VARINT, None),  # int64_data
        8: (_L, None),  # name
        9: (_L, None),  # raw_data: skipped, never read
        10: (_PACKED_I64, None),  # double_data
        11: (_PACKED_VARINT, None),  # uint64_data
        12: (_L, None),  # doc_string
        13: (_L, "entry"),  # external_data
        14: (_V, None),  # data_location
        16: (_L, None),  # metadata_props
    },
    "sparse": {1: (_L, "tensor"), 2: (_L, "tensor"), 3: (_PACKED_VARINT, None)},
    "entry": {1: (_L, None), 2: (_L, None)},
    "opset": {1: (_L, None), 2: (_V, None)},
    "node": {
        5: (_L, "attr"),
        **{n: (_L, None) for n in (1, 2, 3, 4, 6, 7, 8, 9, 10)},
    },
    "attr": {
        2: (frozenset({_I32}), None),  # f
        3: (_V, None),  # i
        5: (_L, "tensor"),  # t
        6: (_L, "graph"),  # g
        7: (_PACKED_I32, None),  # floats
        8: (_PACKED_VARINT, None),  # ints
        10: (_L, "tensor"),  # tensors
        11: (_L, "graph"),  # graphs
        20: (_V, None),  # type
        22: (_L, "sparse"),  # sparse_tensor
        23: (_L, "sparse"),  # sparse_tensors
        **{n: (_L, None) for n in (1, 4, 9, 13, 14, 15, 21)},
    },
    "function": {
        7: (_L, "node"),
        11: (_L, "attr"),
        **{n: (_L, None) for n in (1, 4, 5, 6, 8, 9, 10, 12, 13, 14)},
    },
    "training": {1: (_L, "graph"), 2: (_L, "graph"), 3: (_L, None), 4: (_L, None)},
}


@dataclass(frozen=True)
class OnnxScan:
    """What the scanner learnt about a structurally valid ONNX file."""

    ir_version: int
    producer_name: str
    producer_version: str
    opset_imports: dict[str, int]
    # Unique normalised external-data locations, relative to the model's folder.
    external_locations: tuple[str, ...] = ()
    external_tensors: int = 0
    # Bytes each external file must hold at least (max offset + length).
    external_min_sizes: dict[str, int] = field(default_factory=dict)


def _bad(detail: str) -> InvalidModelError:
    return InvalidModelError(
        f"The file is not a valid ONNX model: {detail}. Export it again (torch.onnx.export "
        "or onnx.save) and upload the .onnx file, or a .zip holding it and its external data."
    )


class _Reader:
    """Buffered forward reader; seeking is free until the next read."""

    _CHUNK = 64 * 1024

    def __init__(self, fh: IO[bytes], size: int) -> None:
        self._fh = fh
        self.size = size
        self.pos = 0
        self._buf = b""
        self._buf_at = 0

    def _window(self, n: int) -> int:
        """Make n bytes at pos available in the buffer; return their offset in it.

        The file is only ever read forward (pos never decreases), and the unread
        tail of the buffer is kept instead of seeking back: a backward seek on a
        zip member stream restarts decompression from the start.
        """
        rel = self.pos - self._buf_at
        if rel + n <= len(self._buf):
            return rel
        buf_end = self._buf_at + len(self._buf)
        if self.pos <= buf_end:
            keep = self._buf[rel:]
            more = self._fh.read(max(n - len(keep), self._CHUNK))
        else:
            self._fh.seek(self.pos)  # skip forward over bytes never read
            keep, more = b"", self._fh.read(max(n, self._CHUNK))
        self._buf, self._buf_at = keep + more, self.pos
        return 0

    def truncated(self, end: int) -> InvalidModelError:
        if end >= self.size:
            return _bad("the file is truncated (it ends in the middle of a field)")
        return _bad("a nested message overruns its parent (corrupt file)")

    def varint(self, end: int) -> int:
        rel = self._window(min(10, max(end - self.pos, 0)))
        result = 0
        for i in range(10):
            if self.pos >= end or rel + i >= len(self._buf):
                raise self.truncated(end)
            byte = self._buf[rel + i]
            self.pos += 1
            result |= (byte & 0x7F) << (7 * i)
            if byte < 0x80:
                return result & ((1 << 64) - 1)
        raise _bad("a number is encoded with more than 10 bytes")

    def read(self, n: int, end: int) -> bytes:
        if self.pos + n > end:
            raise self.truncated(end)
        rel = self._window(n)
        data = self._buf[rel : rel + n]
        if len(data) != n:
            raise self.truncated(self.size)
        self.pos += n
        return data


def _string(reader: _Reader, length: int, end: int, what: str) -> str:
    if length > _MAX_STRING:
        raise _bad(f"the {what} is longer than {_MAX_STRING} bytes")
    try:
        return reader.read(length, end).decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(f"the {what} is not UTF-8 text") from None


def normalise_location(location: str) -> str:
    """Return an external-data location in normal form if it stays in its folder.

    Raises:
        InvalidModelError: the location is empty, absolute, names a drive, uses
            backslashes or NUL, or climbs out of the model's folder with '..'.
    """
    problem = None
    if not location or "\x00" in location:
        problem = "is empty or contains NUL"
    elif "\\" in location or ":" in location:
        problem = "uses backslashes or a drive letter"
    elif location.startswith("/"):
        problem = "is an absolute path"
    else:
        norm = posixpath.normpath(location)
        if norm in (".", "..") or norm.startswith("../"):
            problem = "points outside the model's folder"
        else:
            return norm
    raise InvalidModelError(
        f"The ONNX model's external data location {location[:200]!r} {problem}. External "
        "data files must sit next to the .onnx file (or below it), named by a relative path; "
        "save with onnx.save(..., save_as_external_data=True) and zip the folder."
    )


# Kinds whose string fields are decoded and handed back to the parent message.
_DECODED = frozenset({"opset", "entry"})


class _Scanner:
    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.opsets: dict[str, int] = {}
        self.locations: dict[str, int] = {}
        self.external_tensors = 0
        self.graphs = 0

    def field(self, kind: str, end: int) -> tuple[int, int, int, str | None]:
        """Read one field key; return (number, wire type, value, child kind).

        For length-delimited fields the value is the payload length and the
        reader is left at the payload start; for varints it is the value.

        Raises:
            InvalidModelError: unknown field number, wrong wire type, overrun.
        """
        key = self.r.varint(end)
        number, wire = key >> 3, key & 7
        spec = _SCHEMA[kind].get(number)
        if spec is None:
            raise _bad(f"field number {number} is not defined for {kind} (not an ONNX file?)")
        wires, child = spec
        if wire not in wires:
            raise _bad(f"field {number} of {kind} has the wrong wire type {wire}")
        if wire == _VARINT:
            return number, wire, self.r.varint(end), child
        length = self.r.varint(end) if wire == _LEN else _FIXED_SIZE[wire]
        if self.r.pos + length > end:
            raise self.r.truncated(end)
        if wire != _LEN:
            self.r.pos += length
        return number, wire, length, child

    def message(self, kind: str, end: int, depth: int) -> dict[int, str | int]:
        """Walk one message ending at `end`; return its small decoded values.

        Raises:
            InvalidModelError: any structural problem below this message.
        """
        if depth > _MAX_DEPTH:
            raise _bad("messages are nested too deeply")
        values: dict[int, str | int] = {}
        external: list[tuple[str, str]] = []
        while self.r.pos < end:
            number, wire, value, child = self.field(kind, end)
            if wire == _VARINT:
                values[number] = value
            elif wire == _LEN:
                payload_end = self.r.pos + value
                if child is not None:
                    sub = self.message(child, payload_end, depth + 1)
                    self._child_done(kind, child, sub, external)
                elif kind in _DECODED or (kind == "model" and number in (2, 3)):
                    values[number] = _string(self.r, value, payload_end, f"{kind} text")
                self.r.pos = payload_end
        if kind == "tensor":
            self._tensor_done(external, int(values.get(14, 0)))
        return values

    def _child_done(
        self, kind: str, child: str, sub: dict[int, str | int], external: list[tuple[str, str]]
    ) -> None:
        if child == "entry":
            external.append((str(sub.get(1, "")), str(sub.get(2, ""))))
        elif kind == "model" and child == "opset":
            # Only the model's own opset_import is kept: functions carry their own.
            self.opsets[str(sub.get(1, ""))] = int(sub.get(2, 0))
        elif kind == "model" and child == "graph":
            self.graphs += 1
            if self.graphs > 1:
                raise _bad("the model has more than one graph field")

    def _tensor_done(self, entries: list[tuple[str, str]], data_location: int) -> None:
        if data_location not in (0, _EXTERNAL):
            raise _bad(f"a tensor has an unknown data_location {data_location}")
        if not entries and data_location != _EXTERNAL:
            return
        info = dict(entries)
        unknown = set(info) - _EXTERNAL_KEYS
        if unknown:
            raise _bad(f"a tensor's external_data has unknown keys {sorted(unknown)[:5]}")
        if "location" not in info:
            raise _bad("a tensor stores its data externally but names no location")
        location = normalise_location(info["location"])
        offset, length = _int_entry(info, "offset"), _int_entry(info, "length")
        if location not in self.locations and len(self.locations) >= _MAX_LOCATIONS:
            raise _bad("the model names too many external data files")
        self.locations[location] = max(self.locations.get(location, 0), offset + length)
        self.external_tensors += 1


def _int_entry(info: dict[str, str], key: str) -> int:
    text = info.get(key, "0")
    if not text.isdigit() or len(text) > 19:
        raise _bad(f"an external data {key} is not a non-negative integer")
    return int(text)


def _check_on_disk(base_dir: Path, locations: dict[str, int]) -> None:
    """Check that each external file exists inside base_dir and is big enough.

    Raises:
        InvalidModelError: a file is missing, too short, not a regular file, or
            reached through a symlink that leaves base_dir.
    """
    root = base_dir.resolve(strict=True)
    for location, needed in locations.items():
        candidate = root / location
        resolved = candidate.resolve()
        if not resolved.is_relative_to(root):
            raise InvalidModelError(
                f"The ONNX model's external data {location!r} leads outside the model's "
                "folder through a link. Put the real data file next to the .onnx file."
            )
        if not resolved.is_file():
            raise InvalidModelError(
                f"The ONNX model needs the external data file {location!r}, which is not "
                "in the upload. Zip the .onnx file together with its data files."
            )
        if resolved.stat().st_size < needed:
            raise InvalidModelError(
                f"The external data file {location!r} is shorter than the model says "
                f"({needed} bytes needed). Re-save the model and upload it again."
            )


def scan_onnx(
    path: Path, *, base_dir: Path | None = None, max_bytes: int = PROTOBUF_LIMIT
) -> OnnxScan:
    """Validate an ONNX file's structure by streaming it; never loads it whole.

    base_dir, when given, is the folder external data must stay inside; the
    files it names are then checked on disk too (existence, size, symlinks).

    Raises:
        InvalidModelError: the file is empty, too big for protobuf, not a
            ModelProto (random bytes, unknown fields, bad wire types), truncated,
            has no graph or IR version, or its external data leaves its folder.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        result = scan_onnx_stream(fh, size, max_bytes=max_bytes)
    if base_dir is not None:
        _check_on_disk(base_dir, result.external_min_sizes)
    return result


def scan_onnx_stream(fh: IO[bytes], size: int, *, max_bytes: int = PROTOBUF_LIMIT) -> OnnxScan:
    """Like scan_onnx for an open binary stream of `size` bytes (e.g. a zip member).

    Only forward seeks are made, so a zip member stream works in constant memory.
    External-data locations are checked as strings only.

    Raises:
        InvalidModelError: as scan_onnx.
    """
    if size == 0:
        raise _bad("the file is empty")
    if size > max_bytes:
        raise InvalidModelError(
            f"The ONNX file is {size} bytes; protobuf cannot load files of 2 GiB or more. "
            "Save it with onnx.save(..., save_as_external_data=True) and upload a .zip "
            "of the folder holding the .onnx file and its data file."
        )
    scanner = _Scanner(_Reader(fh, size))
    values = scanner.message("model", size, 0)
    if scanner.graphs == 0:
        raise _bad("it has no graph")
    ir_version = int(values.get(1, 0))
    if not 0 < ir_version < 2**32:
        raise _bad("it has no valid ir_version")
    return OnnxScan(
        ir_version=ir_version,
        producer_name=str(values.get(2, "")),
        producer_version=str(values.get(3, "")),
        opset_imports=dict(scanner.opsets),
        external_locations=tuple(sorted(scanner.locations)),
        external_tensors=scanner.external_tensors,
        external_min_sizes=dict(scanner.locations),
    )
