"""The canonical base-weights fingerprint: invariance, sensitivity, comparison, cache."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import struct
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from safetensors.torch import save_file as save_torch

import registry.fingerprint as fp
from registry.errors import IncompatibleBase, InvalidSafetensors, ValidationFailed
from registry.fingerprint import (
    Fingerprint,
    FingerprintCache,
    TensorEntry,
    compare,
    ensure_matches,
    fingerprint_dir,
    fingerprint_files,
    pack_manifest,
    unpack_manifest,
    weight_files,
)
from registry.safetensors_io import read_header
from tests.fixtures.models import TinyModels, read_folder

NP_DTYPES = {np.float32: "F32", np.float16: "F16", np.int8: "I8"}


@pytest.fixture
def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    arrays: dict[str, np.ndarray] = {}
    for layer in range(3):
        arrays[f"model.layers.{layer}.q_proj.weight"] = rng.standard_normal((16, 8), np.float32)
        arrays[f"model.layers.{layer}.norm.weight"] = rng.standard_normal(8).astype(np.float16)
        arrays[f"model.layers.{layer}.scales"] = rng.integers(-128, 127, (5, 3), dtype=np.int8)
    arrays["lm_head.weight"] = rng.standard_normal((32, 8), np.float32)
    arrays["step"] = np.array(3, dtype=np.int8)
    return arrays


def write_raw(path: Path, tensors: list[tuple[str, np.ndarray]], *, pad: int = 0,
              metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file with the data laid out in the given order (safetensors' own writer
    always sorts), with ``pad`` extra spaces after the header."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    offset, blobs = 0, []
    for name, array in tensors:
        data = array.tobytes()
        header[name] = {"dtype": NP_DTYPES[array.dtype.type], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode() + b" " * pad
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def save_shards(folder: Path, arrays: dict[str, np.ndarray], shards: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(arrays)
    paths = []
    for i in range(shards):
        path = folder / f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: arrays[n] for n in names[i::shards]}, str(path), metadata={"format": "np"})
        paths.append(path)
    return paths


def reference_fingerprint(paths: list[Path]) -> str:
    """The plain-Python implementation printed in the module docstring, run as written."""
    doc = fp.__doc__ or ""
    code = textwrap.dedent(doc[doc.index("    import hashlib, json, struct"):])
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 -- our own docstring, to prove the spec is what we run
    digest: str = namespace["fingerprint"]([str(p) for p in paths])
    return digest


def flip_bit(path: Path, tensor: str, byte: int = 3, bit: int = 5) -> None:
    info = read_header(path).tensors[tensor]
    data = bytearray(path.read_bytes())
    data[info.start + byte] ^= 1 << bit
    path.write_bytes(bytes(data))


@pytest.fixture
def count_hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    hashed: list[str] = []
    original = fp._hash_tensor

    def counting(shard: Any, info: Any, counter: Any) -> str:
        hashed.append(info.name)
        return original(shard, info, counter)

    monkeypatch.setattr(fp, "_hash_tensor", counting)
    yield hashed


# --- invariance and sensitivity -------------------------------------------------------------


def test_resharding_reordering_padding_and_metadata_keep_the_fingerprint(
    tmp_path: Path, weights: dict[str, np.ndarray]
) -> None:
    one = save_shards(tmp_path / "one", weights, 1)
    many = save_shards(tmp_path / "many", weights, 4)
    backwards = sorted(weights.items(), reverse=True)
    reordered = [write_raw(tmp_path / "r.safetensors", backwards, pad=13,
                           metadata={"format": "pt", "note": "other"})]
    results = [fingerprint_files(paths) for paths in (one, many, reordered, many[::-1])]
    assert len({r.digest for r in results}) == 1
    assert all(r.tensors == results[0].tensors for r in results)
    assert results[0].digest == reference_fingerprint(one) == reference_fingerprint(many)
    assert results[0].total_bytes == sum(a.nbytes for a in weights.values())
    assert [e.name for e in results[0].tensors] == sorted(weights)


def test_one_flipped_bit_changes_it_and_is_named(
    tmp_path: Path, weights: dict[str, np.ndarray]
) -> None:
    paths = save_shards(tmp_path / "m", weights, 3)
    expected = fingerprint_files(paths)
    target = "model.layers.1.q_proj.weight"
    flip_bit(next(p for p in paths if target in read_header(p).tensors), target)
    actual = fingerprint_files(paths)
    assert actual.digest != expected.digest
    assert actual.digest == reference_fingerprint(paths)
    description = compare(expected.tensors, actual.tensors)
    assert description is not None and target in description and "different bytes" in description
    with pytest.raises(IncompatibleBase) as caught:
        ensure_matches(expected.digest, expected.tensors, actual, expected_revision="abc123",
                       actual_label="/models/llama")
    error = caught.value
    assert expected.digest in error.detail and actual.digest in error.detail
    assert target in error.detail and "/models/llama" in error.detail
    assert error.extra["expected_fingerprint"] == expected.digest
    assert error.extra["actual_fingerprint"] == actual.digest
    assert error.extra["differing_tensor"] == target
    assert error.extra["expected_revision"] == "abc123"
    problem = error.to_problem()
    assert problem["status"] == 422 and target in problem["first_difference"]


def test_bf16_fp16_fp32_int8_tensors_hash_their_raw_bytes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tensors = {
        "bf16": torch.randn(7, 5).to(torch.bfloat16),
        "fp16": torch.randn(9).to(torch.float16),
        "fp32": torch.randn(3, 4, 2),
        "int8": torch.randint(-128, 127, (6,), dtype=torch.int8),
    }
    path = tmp_path / "mixed.safetensors"
    save_torch(tensors, str(path))
    result = fingerprint_files([path])
    by_name = {e.name: e for e in result.tensors}
    assert {e.dtype for e in result.tensors} == {"BF16", "F16", "F32", "I8"}
    for name, tensor in tensors.items():
        raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
        assert by_name[name].sha256 == hashlib.sha256(raw).hexdigest()
        assert by_name[name].shape == tuple(tensor.shape)
    assert result.digest == reference_fingerprint([path])


def test_canonical_lines_are_as_specified() -> None:
    entries = [TensorEntry("b", "BF16", (2048, 5632), "1" * 64),
               TensorEntry("a", "I8", (), "2" * 64)]
    text = f"a\tI8\t[]\t{'2' * 64}\nb\tBF16\t[2048,5632]\t{'1' * 64}\n"
    assert fp.fingerprint_digest(entries) == hashlib.sha256(text.encode()).hexdigest()
    assert fp.fingerprint_digest([]) == hashlib.sha256(b"").hexdigest()


def test_parallel_hashing_matches_one_worker(
    tmp_path: Path, weights: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fp, "DEFAULT_CHUNK", 100)  # many chunks per tensor, odd boundaries
    paths = save_shards(tmp_path / "m", weights, 3)
    serial = fingerprint_files(paths, workers=1)
    assert fingerprint_files(paths, workers=8) == serial
    assert fingerprint_files(paths) == serial
    raw = weights["lm_head.weight"].tobytes()
    lm_head = next(e for e in serial.tensors if e.name == "lm_head.weight")
    assert lm_head.sha256 == hashlib.sha256(raw).hexdigest()


def test_progress_reaches_the_total_on_the_callers_thread(
    tmp_path: Path, weights: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fp, "DEFAULT_CHUNK", 64)
    calls: list[tuple[int, int]] = []
    result = fingerprint_files(save_shards(tmp_path / "m", weights, 2), workers=2,
                               progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (result.total_bytes, result.total_bytes)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


@pytest.mark.slow  # builds a tiny transformers model (shared per session)
def test_real_sharded_model_matches_its_single_file_copy(
    tiny_models: TinyModels, tmp_path: Path
) -> None:
    base = tiny_models.base("llama", "bf16")
    assert (base / fp.INDEX_FILE).exists() and len(weight_files(base)) > 1
    single = tmp_path / "model.safetensors"
    tensors = read_folder(base)
    save_torch(tensors, str(single), metadata={"format": "pt"})
    result = fingerprint_dir(base)
    assert result.digest == fingerprint_files([single]).digest
    assert result.digest == reference_fingerprint(weight_files(base))
    assert {e.dtype for e in result.tensors} == {"BF16"}
    assert len(result.tensors) == len(tensors)


# --- refusals -------------------------------------------------------------------------------


def test_a_tensor_in_two_files_is_refused(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    a = write_raw(tmp_path / "a.safetensors", [("x", weights["step"])])
    b = write_raw(tmp_path / "b.safetensors", [("x", weights["step"])])
    with pytest.raises(InvalidSafetensors, match=r"'x' appears in both .*a\.safetensors and "
                                                 r".*b\.safetensors"):
        fingerprint_files([a, b])


def test_control_characters_in_names_are_refused(tmp_path: Path) -> None:
    path = write_raw(tmp_path / "a.safetensors", [("x\ty", np.zeros(2, np.int8))])
    with pytest.raises(InvalidSafetensors, match="control character"):
        fingerprint_files([path])


def test_a_bad_shard_fails_before_any_hashing(
    tmp_path: Path, weights: dict[str, np.ndarray], count_hashes: list[str]
) -> None:
    good = save_shards(tmp_path / "m", weights, 2)
    bad = tmp_path / "m" / "model-00003-of-00003.safetensors"
    bad.write_bytes(good[0].read_bytes() + b"trailing")
    with pytest.raises(InvalidSafetensors, match=r"model-00003-of-00003\.safetensors: 8 trailing"):
        fingerprint_files([*good, bad])
    assert count_hashes == []


def test_a_file_changed_during_fingerprinting_is_refused(
    tmp_path: Path, weights: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_shards(tmp_path / "m", weights, 1)[0]
    original = fp._parse_shard

    def parse_then_touch(shard: Any) -> None:
        original(shard)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))

    monkeypatch.setattr(fp, "_parse_shard", parse_then_touch)
    with pytest.raises(InvalidSafetensors, match="changed while it was fingerprinted"):
        fingerprint_files([path])


def test_nothing_to_fingerprint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidSafetensors, match="no safetensors files"):
        fingerprint_files([])
    with pytest.raises(InvalidSafetensors, match=r"no \*\.safetensors files"):
        fingerprint_dir(tmp_path)
    with pytest.raises(InvalidSafetensors, match="cannot be read"):
        fingerprint_files([tmp_path / "missing.safetensors"])


# --- model folders --------------------------------------------------------------------------


def write_index(folder: Path, weight_map: dict[str, str]) -> None:
    (folder / fp.INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_the_index_chooses_the_files(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    paths = save_shards(tmp_path, weights, 2)
    write_index(tmp_path, {n: p.name for p in paths for n in read_header(p).tensors})
    # A second copy of the weights beside the shards, as some repositories ship.
    save_file(weights, str(tmp_path / "consolidated.safetensors"))
    assert weight_files(tmp_path) == paths
    assert fingerprint_dir(tmp_path).digest == fingerprint_files(paths).digest
    (tmp_path / fp.INDEX_FILE).unlink()
    assert len(weight_files(tmp_path)) == 3


@pytest.mark.parametrize("target", ["../outside.safetensors", "/etc/passwd", "absent.safetensors"])
def test_an_index_pointing_elsewhere_is_refused(tmp_path: Path, target: str) -> None:
    write_index(tmp_path, {"x": target})
    with pytest.raises(InvalidSafetensors, match=fp.INDEX_FILE):
        weight_files(tmp_path)


# --- comparison -----------------------------------------------------------------------------

BASE = [TensorEntry("a", "F32", (2, 2), "a" * 64), TensorEntry("b", "BF16", (4,), "b" * 64),
        TensorEntry("c", "I8", (), "c" * 64)]


def changed(name: str, **fields: Any) -> list[TensorEntry]:
    return [TensorEntry(**{**e.__dict__, **fields}) if e.name == name else e for e in BASE]


@pytest.mark.parametrize(("actual", "expected_text"), [
    (BASE[1:], "tensor 'a' is missing (expected F32[2,2])"),
    ([*BASE, TensorEntry("aa", "U8", (1,), "d" * 64)], "tensor 'aa' is not in the expected base"),
    (changed("b", dtype="F16"), "tensor 'b' has dtype F16, expected BF16"),
    (changed("b", shape=(2, 2)), "tensor 'b' has shape [2,2], expected [4]"),
    (changed("c", sha256="0" * 64), f"tensor 'c' has different bytes (sha256 {'0' * 64}"),
    ([BASE[0], changed("b", sha256="0" * 64)[1], changed("c", dtype="U8")[2]], "tensor 'b'"),
])
def test_compare_names_the_first_difference(actual: list[TensorEntry], expected_text: str) -> None:
    description = compare(BASE, actual)
    assert description is not None and description.startswith(expected_text)


def test_compare_equal_and_ensure_matches_passes() -> None:
    assert compare(BASE, list(reversed(BASE))) is None
    digest = fp.fingerprint_digest(BASE)
    ensure_matches(digest, None, Fingerprint(digest, BASE, 0))


def test_ensure_matches_without_a_manifest_still_names_both_fingerprints() -> None:
    actual = Fingerprint(fp.fingerprint_digest(BASE), BASE, 0)
    with pytest.raises(IncompatibleBase) as caught:
        ensure_matches("e" * 64, None, actual)
    assert "e" * 64 in caught.value.detail and actual.digest in caught.value.detail
    assert caught.value.extra["differing_tensor"] is None
    assert "expected_revision" not in caught.value.extra


# --- manifests ------------------------------------------------------------------------------


def test_manifests_round_trip_canonically() -> None:
    packed = pack_manifest(BASE)
    assert pack_manifest(reversed(BASE)) == packed
    assert unpack_manifest(packed) == BASE
    doc = json.loads(zlib.decompress(packed))
    assert doc == {"format": "lorareg-fp-v1",
                   "tensors": [[e.name, e.dtype, list(e.shape), e.sha256] for e in BASE]}


@pytest.mark.parametrize("blob", [
    b"not zlib",
    zlib.compress(b"[]"),
    zlib.compress(json.dumps({"format": "other", "tensors": []}).encode()),
    zlib.compress(json.dumps({"format": "lorareg-fp-v1", "tensors": [["a", "F32", [1], "x"]]})
                  .encode()),
    zlib.compress(json.dumps({"format": "lorareg-fp-v1",
                              "tensors": [["a", "F32", [1], "a" * 64]] * 2}).encode()),
])
def test_bad_manifests_are_refused(blob: bytes) -> None:
    with pytest.raises(ValidationFailed):
        unpack_manifest(blob)


def test_manifest_bombs_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fp, "MAX_MANIFEST_BYTES", 1000)
    many = [TensorEntry(f"t{i}", "F32", (1,), "a" * 64) for i in range(100)]
    with pytest.raises(ValidationFailed, match="inflates past 1000 bytes"):
        unpack_manifest(pack_manifest(many))


# --- cache ----------------------------------------------------------------------------------


def fingerprint_cached(paths: list[Path], cache: FingerprintCache,
                       ) -> tuple[Fingerprint, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    result = fingerprint_files(paths, cache=cache, progress=lambda d, t: calls.append((d, t)))
    return result, calls


def test_the_cache_skips_hashing_unchanged_files(
    tmp_path: Path, weights: dict[str, np.ndarray], count_hashes: list[str]
) -> None:
    paths = save_shards(tmp_path / "m", weights, 3)
    cache = FingerprintCache(tmp_path / "cache" / "fp.sqlite")
    first, _ = fingerprint_cached(paths, cache)
    assert sorted(count_hashes) == sorted(weights)
    count_hashes.clear()
    second, calls = fingerprint_cached(paths, FingerprintCache(cache.path))  # another instance
    assert second == first and count_hashes == [] and calls == [(0, 0)]  # nothing hashed


def test_touching_a_file_invalidates_only_that_file(
    tmp_path: Path, weights: dict[str, np.ndarray], count_hashes: list[str]
) -> None:
    paths = save_shards(tmp_path / "m", weights, 3)
    cache = FingerprintCache(tmp_path / "fp.sqlite")
    first = fingerprint_files(paths, cache=cache)
    count_hashes.clear()
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert fingerprint_files(paths, cache=cache) == first
    assert sorted(count_hashes) == sorted(read_header(paths[1]).tensors)


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(
    tmp_path: Path, weights: dict[str, np.ndarray]
) -> None:
    paths = save_shards(tmp_path / "m", weights, 1)
    cache = FingerprintCache(tmp_path / "fp.sqlite")
    first = fingerprint_files(paths, cache=cache)
    stat = paths[0].stat()
    time.sleep(0.05)  # past the kernel's coarse timestamp tick, so ctime moves
    flip_bit(paths[0], "lm_head.weight")
    os.utime(paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # mtime put back, ctime not
    assert paths[0].stat().st_size == stat.st_size
    assert fingerprint_files(paths, cache=cache).digest != first.digest


def test_a_damaged_cache_is_ignored(
    tmp_path: Path, weights: dict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    paths = save_shards(tmp_path / "m", weights, 1)
    broken = tmp_path / "fp.sqlite"
    broken.write_bytes(b"this is not a database" * 100)
    assert fingerprint_files(paths, cache=FingerprintCache(broken)) == fingerprint_files(paths)
    assert "fingerprint cache" in caplog.text


def test_the_default_cache_location(tmp_path: Path) -> None:
    assert FingerprintCache.default(tmp_path / "x.sqlite").path == tmp_path / "x.sqlite"
    default = FingerprintCache.default().path
    assert default.parts[-3:] == (".cache", "lorareg", "fingerprints.sqlite")


def test_the_cache_is_shared_by_processes_in_wal_mode(tmp_path: Path) -> None:
    cache = FingerprintCache(tmp_path / "fp.sqlite")
    key = fp.FileKey("/x", 1, 2, 3, 4, 5)
    cache.put_many({key: b"entries"})
    assert FingerprintCache(cache.path).get_many([key]) == {key: b"entries"}
    conn = sqlite3.connect(cache.path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()

