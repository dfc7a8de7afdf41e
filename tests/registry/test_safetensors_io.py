"""Defensive safetensors header parsing and zero-copy tensor reads."""

from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
from pydantic import ValidationError
from safetensors.numpy import save, save_file

from registry.config import Settings
from registry.errors import InvalidSafetensors
from registry.safetensors_io import (
    ADAPTER_LIMITS,
    DEFAULT_MAX_HEADER,
    DEFAULT_MAX_TENSORS,
    DTYPE_BITS,
    DTYPE_SIZES,
    FORMAT_LIMITS,
    MAX_HEADER_LEN,
    Header,
    HeaderLimits,
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


# --- header limits --------------------------------------------------------------------------

LLAMA_LINEAR = {  # module -> (in, out) as multiples of (hidden, kv width, intermediate)
    "self_attn.q_proj": ("h", "h"), "self_attn.k_proj": ("h", "kv"),
    "self_attn.v_proj": ("h", "kv"), "self_attn.o_proj": ("h", "h"),
    "mlp.gate_proj": ("h", "i"), "mlp.up_proj": ("h", "i"), "mlp.down_proj": ("i", "h"),
}


def peft_llama_shapes(layers: int, hidden: int, inter: int, kv_heads: int, head_dim: int,
                      r: int) -> dict[str, list[int]]:
    """Tensor shapes of a PEFT LoRA on every linear layer of a Llama (all-linear targets)."""
    dims = {"h": hidden, "kv": kv_heads * head_dim, "i": inter}
    shapes: dict[str, list[int]] = {}
    for i in range(layers):
        for module, (fan_in, fan_out) in LLAMA_LINEAR.items():
            key = f"base_model.model.model.layers.{i}.{module}"
            shapes[f"{key}.lora_A.weight"] = [r, dims[fan_in]]
            shapes[f"{key}.lora_B.weight"] = [dims[fan_out], r]
    return shapes


def written_header(shapes: dict[str, list[int]], dtype: str = "BF16") -> bytes:
    """The header safetensors writes for these tensors, without allocating them: compact JSON,
    metadata first, tensors sorted by name (one dtype), padded with spaces to 8 bytes."""
    body: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in sorted(shapes):
        size = tensor_nbytes(dtype, shapes[name])
        body[name] = {"dtype": dtype, "shape": shapes[name],
                      "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(body, separators=(",", ":")).encode()
    return text + b" " * (-len(text) % 8)


def test_the_header_builder_writes_what_safetensors_writes() -> None:
    shapes = peft_llama_shapes(layers=3, hidden=64, inter=160, kv_heads=2, head_dim=8, r=4)
    real = save({k: np.zeros(v, np.float16) for k, v in shapes.items()},
                metadata={"format": "pt"})
    length = int.from_bytes(real[:8], "little")
    assert written_header(shapes, "F16") == real[8 : 8 + length]


def test_default_caps_hold_a_70b_all_linear_lora_with_headroom() -> None:
    # Llama-3-70B: 80 layers, hidden 8192, intermediate 28672, 8 KV heads of 128; r=64.
    shapes = peft_llama_shapes(80, 8192, 28672, 8, 128, r=64)
    header = written_header(shapes)
    print(f"Llama-70B all-linear r=64 LoRA: {len(shapes)} tensors, {len(header)}-byte header")
    assert (len(shapes), len(header)) == (1120, 153_680)
    assert 4 * len(header) <= DEFAULT_MAX_HEADER <= 8 * len(header)
    assert 4 * len(shapes) <= DEFAULT_MAX_TENSORS <= 8 * len(shapes)
    # Llama-3.1-405B: 126 layers, hidden 16384, intermediate 53248: still 4x under both caps.
    big = peft_llama_shapes(126, 16384, 53248, 8, 128, r=64)
    assert 4 * len(written_header(big)) <= DEFAULT_MAX_HEADER
    assert 4 * len(big) <= DEFAULT_MAX_TENSORS
    data = struct.pack("<Q", len(header)) + header
    file_size = len(data) + sum(tensor_nbytes("BF16", s) for s in shapes.values())
    parsed = parse_header(GuardedReader(data).read, file_size, NAME)  # reads the header only
    assert len(parsed.tensors) == 1120 and parsed.metadata == {"format": "pt"}


def test_a_header_over_the_cap_is_refused_from_its_length_prefix() -> None:
    text = json.dumps(f32("a", 0, 4)).encode().ljust(100)
    data = raw_file(None, b"\0" * 4, raw=text)  # a valid 100-byte header
    limits = HeaderLimits(max_header=99, max_tensors=10)
    reader = GuardedReader(data)
    with pytest.raises(InvalidSafetensors, match=r"header length 100 exceeds the 99-byte limit "
                       r"\(LORAREG_MAX_SAFETENSORS_HEADER\)"):
        parse_header(reader.read, len(data), NAME, limits)
    assert reader.pos == 8  # not one byte of the header itself was read
    assert parse_header(GuardedReader(data).read, len(data), NAME,
                        HeaderLimits(100, 10)).tensors["a"].nbytes == 4


def test_format_limits_keep_only_the_reference_cap() -> None:
    with pytest.raises(InvalidSafetensors, match=r"exceeds the 100000000-byte limit \(the "
                       "format's maximum\\)"):
        parse_header(GuardedReader(struct.pack("<Q", MAX_HEADER_LEN + 1)).read, 2**40, NAME,
                     FORMAT_LIMITS)
    with pytest.raises(InvalidSafetensors, match="exceeds the 100000000-byte"):
        data = struct.pack("<Q", MAX_HEADER_LEN + 1)  # limits above the format's are clamped
        parse_header(GuardedReader(data).read, 2**40, NAME, HeaderLimits(2 * MAX_HEADER_LEN))


def tiny_tensors(count: int, metadata: bool = False) -> bytes:
    header: dict[str, Any] = {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]}
                              for i in range(count)}
    if metadata:
        header["__metadata__"] = {"format": "pt"}
    return raw_file(header, b"\0" * count)


@pytest.mark.parametrize("metadata", [False, True])
def test_the_tensor_count_is_capped(metadata: bool) -> None:
    limits = HeaderLimits(max_header=MAX_HEADER_LEN, max_tensors=5)
    ok = tiny_tensors(5, metadata)
    assert len(parse_header(GuardedReader(ok).read, len(ok), NAME, limits).tensors) == 5
    for count in (6, 7, 500):
        data = tiny_tensors(count, metadata)
        with pytest.raises(InvalidSafetensors, match=r"more than 5 tensors, the limit "
                           r"\(LORAREG_MAX_SAFETENSORS_TENSORS\)"):
            parse_header(GuardedReader(data).read, len(data), NAME, limits)


def test_non_object_entries_count_as_tensors() -> None:
    data = raw_file({f"t{i}": i for i in range(6)})  # no objects for the decoder hook to count
    with pytest.raises(InvalidSafetensors, match="more than 5 tensors"):
        parse_header(GuardedReader(data).read, len(data), NAME, HeaderLimits(1000, 5))


def bomb(size: int, count: int | None = None, name_len: int = 1) -> bytes:
    """A ``size``-byte header of 1-byte tensors (``count`` of them, or as many as fit), one
    byte of data short, so that only the last check refuses it."""
    parts, used = [], 2
    for i in range(count if count is not None else size):
        entry = (f'"{str(i).rjust(name_len, "x")}":{{"dtype":"U8","shape":[1],'
                 f'"data_offsets":[{i},{i + 1}]}}')
        if used + len(entry) + 1 > size:
            break
        parts.append(entry)
        used += len(entry) + 1
    assert count is None or len(parts) == count
    text = ("{" + ",".join(parts) + "}").encode().ljust(size)
    return raw_file(None, b"\0" * (len(parts) - 1), raw=text)


def traced_peak(data: bytes, limits: HeaderLimits, problem: str) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(InvalidSafetensors, match=problem):
            parse_header(GuardedReader(data).read, len(data), NAME, limits)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


MiB = 1024 * 1024


@pytest.mark.parametrize(("count", "name_len", "problem"), [
    (None, 1, "more than 8192 tensors"),  # ~16,600 tiny tensors: the decoder stops at 8,194
    (DEFAULT_MAX_TENSORS, 70, "run past the end"),  # all 8,192 built and checked, then refused
])
def test_a_header_at_the_default_caps_parses_in_bounded_memory(
    count: int | None, name_len: int, problem: str
) -> None:
    peak = traced_peak(bomb(DEFAULT_MAX_HEADER, count, name_len), ADAPTER_LIMITS, problem)
    # Measured: 6.7 and 7.4 MiB for this 1 MiB header.
    assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB"


def test_the_decoder_stops_at_the_tensor_cap() -> None:
    # 8 MiB of tiny tensors (128,000 of them) under an 8 MiB header cap: the decoder gives up
    # after 8,194 objects. Measured: 21 MiB; building them all (no tensor cap) takes 98 MiB.
    data = bomb(8 * MiB)
    peak = traced_peak(data, HeaderLimits(8 * MiB, DEFAULT_MAX_TENSORS), "more than 8192")
    assert peak < 32 * MiB, f"{peak / MiB:.1f} MiB"


def test_settings_thread_the_caps_and_refuse_nonsense() -> None:
    assert Settings().safetensors_limits == ADAPTER_LIMITS
    custom = Settings(max_safetensors_header=8 << 20, max_safetensors_tensors=65536)
    assert custom.safetensors_limits == HeaderLimits(8 << 20, 65536)
    bad: list[dict[str, Any]] = [{"max_safetensors_header": MAX_HEADER_LEN + 1},
                                 {"max_safetensors_header": 0}, {"max_safetensors_tensors": 0}]
    for values in bad:
        with pytest.raises(ValidationError):
            Settings(**values)
