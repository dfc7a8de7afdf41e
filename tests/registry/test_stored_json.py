"""registry.stored_json: what may be stored and served back as a JSON document."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry import stored_json
from registry.stored_json import MAX_DEPTH, UnsafeJSON


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("raw,reason", [
    ('{"x": "\\ud800"}', "lone surrogate U+D800 at $['x']"),
    ('{"a": {"\\udfff": 1}}', "lone surrogate U+DFFF at a key in $['a']"),
    ('["ok", "\\udc00\\ud800"]', "lone surrogate U+DC00 at $[1]"),
    (nested(MAX_DEPTH + 1), f"nested deeper than {MAX_DEPTH} levels"),
    (nested(900), f"nested deeper than {MAX_DEPTH} levels"),
    (nested(100_000), f"nested deeper than {MAX_DEPTH} levels"),
    ("1" * 5000, "integer of 5000 digits"),
    ("-" + "9" * 4301, "integer of 4302 digits"),
    (str(2**63), "outside 64 bits"),
    (str(-(2**63) - 1), "outside 64 bits"),
    ("NaN", "NaN"), ("Infinity", "Infinity"), ("[-Infinity]", "-Infinity"),
    ("1e999", "overflows a double"), ("-1" + "0" * 400 + ".5", "overflows a double"),
    ("{", "not valid JSON"), ("", "not valid JSON"),
])
def test_refused_with_the_reason(raw: str, reason: str) -> None:
    with pytest.raises(UnsafeJSON) as err:
        stored_json.loads(raw)
    assert reason in str(err.value)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400


def test_bytes_must_be_utf8() -> None:
    with pytest.raises(UnsafeJSON, match="not valid UTF-8"):
        stored_json.loads(b'{"x": "caf\xe9"}')
    with pytest.raises(UnsafeJSON, match="not valid UTF-8"):
        stored_json.loads(b'{"x": "\xed\xa0\x80"}')  # a surrogate encoded as UTF-8 bytes


@pytest.mark.parametrize("value", [
    {"r": 8, "lora_alpha": 16.5, "target_modules": ["q_proj"], "bias": None, "flag": True},
    {"big": 2**63 - 1, "small": -(2**63), "tiny": 5e-324, "huge": 1.7e308, "nul": "\x00"},
    {"unicode": "caf\u00e9 \U0001f600 \u202e", "deep": json.loads(nested(MAX_DEPTH - 1))},
])
def test_accepted_documents_round_trip(value: dict[str, Any]) -> None:
    raw = json.dumps(value)
    assert stored_json.loads(raw) == value == stored_json.loads(raw.encode())
    json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")  # servable


def test_long_keys_keep_messages_short() -> None:
    key = "k" * 100_000
    with pytest.raises(UnsafeJSON) as err:
        stored_json.loads(json.dumps({key: {key: [1, "\ud800"]}}))
    assert len(str(err.value)) < 300


def test_check_refuses_values_json_cannot_hold() -> None:
    with pytest.raises(UnsafeJSON, match="holds a bytes"):
        stored_json.check({"x": b"raw"})
    with pytest.raises(UnsafeJSON, match="nan"):
        stored_json.check([float("nan")])


def test_depth_counts_containers() -> None:
    assert stored_json.loads(nested(MAX_DEPTH)) is not None
    assert stored_json.loads(json.dumps({"a": [{"b": 1}]})) == {"a": [{"b": 1}]}
    with pytest.raises(UnsafeJSON, match="nested deeper"):
        stored_json.loads(json.dumps({"a": json.loads(nested(MAX_DEPTH))}))
