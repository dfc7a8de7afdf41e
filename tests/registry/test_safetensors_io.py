"""Defensive safetensors header parsing and zero-copy tensor reads."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
from safetensors.numpy import save_file

from registry.errors import InvalidSafetensors
from registry.safetensors_io import (
    DTYPE_BITS,
    DTYPE_SIZES,
    MAX_HEADER_LEN,
    Header,
    parse_header,
    read_header,
    tensor_bytes,
    tensor_chunks,
    tensor_nbytes,
)

NAME = "weights/model-00001.safetensors"


class GuardedReader:
    """``read(n)`` over bytes that fails the test if asked for anything past the file's end."""

    def __init__(self, data: bytes, chunk: int | None = None) -> None:
        self.data, self.pos, self.chunk = data, 0, chunk

    def read(self, n: int) -> bytes:
        assert n >= 0
        assert self.pos + n <= len(self.data), f"asked for {self.pos}+{n} of {len(self.data)}"
        n = min(n, self.chunk or n)  # short reads, as a network stream may give
        part = self.data[self.pos : self.pos + n]
        self.pos += len(part)
        return part


def raw_file(header: Any, data: bytes = b"", *, pad: int = 0, raw: bytes | None = None) -> bytes:
    """A file made of an arbitrary header (or raw header bytes) and data."""
    text = raw if raw is not None else json.dumps(header).encode() + b" " * pad
    return struct.pack("<Q", len(text)) + text + data


def parse(data: bytes, chunk: int | None = None) -> Header:
    return parse_header(GuardedReader(data, chunk).read, len(data), NAME)


def f32(name: str, begin: int, end: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {name: {"dtype": "F32", "shape": shape or [(end - begin) // 4],
                   "data_offsets": [begin, end]}}


def test_reads_a_numpy_file_with_absolute_offsets(tmp_path: Path) -> None:
    arrays: dict[str, np.ndarray] = {
        "a": np.arange(10, dtype=np.float32),
        "b": np.zeros((0, 3), dtype=np.int8),
        "c": np.ones((3, 5), dtype=np.float16),
        "scalar": np.array(7, dtype=np.int64),
    }
    path = tmp_path / "x.safetensors"
    save_file(arrays, str(path), metadata={"format": "np"})
    header = read_header(path)
    assert header.metadata == {"format": "np"}
    assert header.file_size == path.stat().st_size
    assert header.tensors["c"].dtype == "F16" and header.tensors["c"].shape == (3, 5)
    assert header.tensors["scalar"].shape == ()
    raw = path.read_bytes()
    for name, array in arrays.items():
        info = header.tensors[name]
        assert raw[info.start : info.end] == array.tobytes()
        assert info.start >= header.data_start
        assert bytes(tensor_bytes(path, info)) == array.tobytes()
        chunks = [bytes(c) for c in tensor_chunks(path, info, chunk_size=7)]
        assert b"".join(chunks) == array.tobytes()


def test_tensor_views_work_past_the_mmap_granularity(tmp_path: Path) -> None:
    # Offsets that are not multiples of the page size exercise the aligned sub-range mapping.
    rng = np.random.default_rng(0)
    arrays = {f"t{i}": rng.random(3001 + i, dtype=np.float32) for i in range(4)}
    path = tmp_path / "x.safetensors"
    save_file(arrays, str(path))
    for name, info in read_header(path).tensors.items():
        assert bytes(tensor_bytes(path, info)) == arrays[name].tobytes()
        chunks = [bytes(c) for c in tensor_chunks(path, info, chunk_size=4096)]
        assert b"".join(chunks) == arrays[name].tobytes()


def test_parses_through_short_reads_and_reads_only_the_header() -> None:
    data = raw_file({**f32("a", 0, 8), "__metadata__": {"k": "v"}}, b"\0" * 8, pad=5)
    reader = GuardedReader(data, chunk=3)
    header = parse_header(reader.read, len(data), NAME)
    assert reader.pos == header.data_start  # not one byte of tensor data was read
    assert header.tensors["a"].start == header.data_start
    assert header.metadata == {"k": "v"}


def test_accepts_empty_files_zero_size_tensors_and_null_metadata() -> None:
    assert parse(raw_file({}, pad=6)).tensors == {}
    zero = {"z": {"dtype": "I8", "shape": [0, 4], "data_offsets": [0, 0]}}
    header = parse(raw_file({**zero, **f32("a", 0, 4), "__metadata__": None}, b"\0" * 4))
    assert header.tensors["z"].nbytes == 0 and header.metadata == {}


def test_sub_byte_dtypes_must_fill_whole_bytes() -> None:
    ok = {"q": {"dtype": "F4", "shape": [2, 3], "data_offsets": [0, 3]}}
    assert parse(raw_file(ok, b"\0" * 3)).tensors["q"].nbytes == 3
    odd = {"q": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}
    with pytest.raises(InvalidSafetensors, match="whole number of bytes"):
        parse(raw_file(odd, b"\0" * 2))
    assert tensor_nbytes("F6_E2M3", [4]) == 3
    with pytest.raises(ValueError, match="whole number"):
        tensor_nbytes("F4", [1])


def test_dtype_tables_follow_the_reference() -> None:
    assert {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16", "F32",
            "F64", "F8_E4M3", "F8_E5M2", "F8_E8M0", "C64", "F4"} <= DTYPE_BITS.keys()
    assert DTYPE_SIZES["BF16"] == 2 and DTYPE_SIZES["C64"] == 8
    assert "F4" not in DTYPE_SIZES and "F6_E3M2" not in DTYPE_SIZES


MALICIOUS: dict[str, tuple[bytes, str]] = {
    "too short": (b"\x05\0\0", "too short"),
    "huge header length": (struct.pack("<Q", 2**63) + b"{}", "exceeds"),
    "header over the cap": (struct.pack("<Q", MAX_HEADER_LEN + 1) + b"{}", "exceeds"),
    "header past end of file": (struct.pack("<Q", 1000) + b"{}", "runs past the end"),
    "non UTF-8": (raw_file(None, raw=b'{"a\xff":1}'), "not valid UTF-8"),
    "not JSON": (raw_file(None, raw=b"{not json"), "not valid JSON"),
    "not an object": (raw_file([1, 2]), "must be a JSON object"),
    "duplicate tensor": (raw_file(None, b"\0" * 4, raw=b'{"a":{"dtype":"F32","shape":[1],'
                         b'"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],'
                         b'"data_offsets":[0,4]}}'), "duplicate key 'a'"),
    "duplicate field": (raw_file(None, b"\0" * 4, raw=b'{"a":{"dtype":"F32","dtype":"I32",'
                        b'"shape":[1],"data_offsets":[0,4]}}'), "duplicate key 'dtype'"),
    "NaN": (raw_file(None, raw=b'{"__metadata__":{"a":NaN}}'), "NaN is not allowed"),
    "lone surrogate": (raw_file(None, raw=b'{"\\ud800":{}}'), "lone surrogate"),
    "deep nesting": (raw_file(None, raw=b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    "metadata not object": (raw_file({"__metadata__": ["x"]}), "must be an object of strings"),
    "metadata not string": (raw_file({"__metadata__": {"n": 1}}), "is not a string"),
    "tensor not object": (raw_file({"a": 3}), "tensor 'a' must be an object"),
    "bad dtype": (raw_file({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}},
                           b"\0" * 16), "unknown dtype 'F128'"),
    "dtype not string": (raw_file({"a": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}},
                                  b"\0" * 4), "unknown dtype"),
    "negative dim": (raw_file(f32("a", 0, 4, [-1]), b"\0" * 4), "non-negative integers"),
    "float dim": (raw_file(f32("a", 0, 4, [1.0]), b"\0" * 4), "non-negative integers"),  # type: ignore[list-item]
    "bool dim": (raw_file(f32("a", 0, 4, [True]), b"\0" * 4), "non-negative integers"),
    "shape not list": (raw_file({"a": {"dtype": "F32", "shape": 1, "data_offsets": [0, 4]}},
                                b"\0" * 4), "shape must be a list"),
    "three offsets": (raw_file({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}},
                               b"\0"), "list of 2 non-negative"),
    "backwards offsets": (raw_file({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}},
                                   b"\0" * 4), "run backwards"),
    "offsets out of bounds": (raw_file(f32("a", 0, 4000), b"\0" * 8), "run past the end"),
    "truncated data": (raw_file(f32("a", 0, 16), b"\0" * 12), "run past the end"),
    "shape disagrees with length": (raw_file(f32("a", 0, 8, [3]), b"\0" * 8),
                                    "needs 12 bytes but its offsets span 8"),
    "gigantic shape": (raw_file(f32("a", 0, 8, [10**4000, 10**4000]), b"\0" * 8),
                       "needs more bytes than the whole"),
    "overlapping tensors": (raw_file({**f32("a", 0, 8), **f32("b", 4, 12)}, b"\0" * 12),
                            "tensor 'b' overlaps tensor 'a'"),
    "same offsets twice": (raw_file({**f32("a", 0, 8), **f32("b", 0, 8)}, b"\0" * 8),
                           "overlaps"),
    "hole between tensors": (raw_file({**f32("a", 0, 4), **f32("b", 8, 12)}, b"\0" * 12),
                             "4 bytes before tensor 'b' belong to no tensor"),
    "data not starting at 0": (raw_file(f32("a", 4, 8), b"\0" * 8), "belong to no tensor"),
    "trailing garbage": (raw_file(f32("a", 0, 8), b"\0" * 8 + b"junk"), "4 trailing bytes"),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_refuses_malicious_files_without_reading_past_the_end(case: str) -> None:
    data, problem = MALICIOUS[case]
    with pytest.raises(InvalidSafetensors) as caught:
        parse(data, chunk=4096)
    assert caught.value.detail.startswith(f"{NAME}: ")
    assert problem in caught.value.detail
    assert len(caught.value.detail) < 400  # hostile names and shapes do not flood messages


REFERENCE_ALSO_REFUSES = ["header past end of file", "bad dtype", "truncated data",
                          "shape disagrees with length", "overlapping tensors",
                          "hole between tensors", "trailing garbage", "non UTF-8"]


@pytest.mark.parametrize("case", REFERENCE_ALSO_REFUSES)
def test_the_reference_implementation_refuses_the_same_files(case: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(MALICIOUS[case][0])
    with pytest.raises(safetensors.SafetensorError), safetensors.safe_open(str(path), "numpy"):
        pass


def test_read_header_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.safetensors"
    path.write_bytes(MALICIOUS["trailing garbage"][0])
    with pytest.raises(InvalidSafetensors, match=r"broken\.safetensors: 4 trailing bytes"):
        read_header(path)


def test_hostile_tensor_names_are_shortened_in_errors() -> None:
    name = "x" * 5000
    with pytest.raises(InvalidSafetensors) as caught:
        parse(raw_file({name: {"dtype": "F128", "shape": [], "data_offsets": [0, 0]}}))
    assert len(caught.value.detail) < 300
