"""registry.manifest: safe and portable file paths (the one check push and the server share)."""

from __future__ import annotations

import unicodedata

import pytest

from registry.errors import InvalidPath
from registry.manifest import (
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    WINDOWS_DEVICES,
    check_portable,
    normalize_path,
)


def refusal(paths: list[str]) -> str:
    with pytest.raises(InvalidPath) as err:
        check_portable(paths)
    detail = err.value.detail
    assert "\n" not in detail and err.value.status_code == 422
    return detail


@pytest.mark.parametrize("paths,reason", [
    (["a" * (MAX_COMPONENT_BYTES + 1)], f"at most {MAX_COMPONENT_BYTES} bytes"),
    (["d/" + "\u00e9" * 128], f"at most {MAX_COMPONENT_BYTES} bytes"),  # 256 bytes
    (["/".join(["\u00e9" * 100] * 3)], f"longer than {MAX_PATH_BYTES} bytes"),
    (["conf", "conf/x.txt"], "'conf' is both a file and the folder"),
    (["conf/x.txt", "conf"], "'conf' is both a file and the folder"),
    (["a/b/c", "a/b"], "'a/b' is both a file and the folder"),
    (["README.md", "readme.md"], "file paths 'README.md' and 'readme.md' differ only by case"),
    (["A/x", "a/y"], "'A' and 'a' (in file paths 'A/x' and 'a/y') differ only by case"),
    (["a/X", "A"], "differ only by case"),
    (["\u00c9t\u00e9.txt", "\u00e9t\u00e9.txt"], "differ only by case"),
    # Full case folding (the broader rule: refusing costs a rename, a clash loses a file)
    (["stra\u00dfe", "strasse/x"], "differ only by case"),
    ([unicodedata.normalize("NFD", "caf\u00e9")], "not in Unicode NFC form"),
    (["\u212b.txt"], "not in Unicode NFC form"),  # ANGSTROM SIGN: NFC is U+00C5
    *[([f"a{c}b"], f"U+{ord(c):04X}") for c in
      "\x01\x1f\x7f\x80\x85\x9f\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u00ad"
      "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029\ud800\udfff"],
    *[([f"ab{c}c"], "Windows does not allow") for c in '<>:"|?*\\'],
    *[([name], "reserves for a device") for name in
      ("CON", "con", "Nul.txt", "aux.tar.gz", "x/COM1", "lpt9.json", "COM\u00b9", "prn .txt",
       "CONIN$")],
    (["notes."], "ending in a dot or space"),
    (["notes "], "ending in a dot or space"),
    (["dir./x"], "ending in a dot or space"),
    (["..."], "ending in a dot or space"),
])
def test_unportable(paths: list[str], reason: str) -> None:
    assert reason in refusal(paths)


@pytest.mark.parametrize("paths", [
    ["README.md", "adapter_config.json", "adapter_model.safetensors"],
    ["checkpoint-1/optimizer.pt", "checkpoint-1/scheduler.pt", "checkpoint-2/optimizer.pt"],
    ["caf\u00e9.txt", "\u65e5\u672c\u8a9e/\u8aac\u660e.md", "emoji \U0001f600.txt"],
    ["a" * MAX_COMPONENT_BYTES, "d/" + "\u00e9" * 127],
    ["/".join(["d" * 100] * 5) + "/x" * 3],  # 511 bytes
    ["con_notes.txt", "console.log", "com10", "lpt", "nul_", ".hidden", "a b.txt", "x.y.z"],
])
def test_portable(paths: list[str]) -> None:
    check_portable(paths)


def test_limits_are_bytes_of_utf8_at_the_edge() -> None:
    check_portable(["/".join(["d" * 255, "e" * 255])])  # 511 bytes
    assert "longer than" in refusal(["/".join(["d" * 255, "e" * 255, "f"])])  # 513 bytes
    check_portable(["\u00e9" * 127 + "a"])  # 255 bytes
    assert "bytes" in refusal(["\u00e9" * 128])


def test_devices_cover_windows_list() -> None:
    assert {"CON", "PRN", "AUX", "NUL"} <= WINDOWS_DEVICES
    assert {f"COM{i}" for i in range(1, 10)} | {f"LPT{i}" for i in range(1, 10)} <= WINDOWS_DEVICES


def test_pull_side_normalize_path_stays_tolerant() -> None:
    """Versions stored before these checks stay pullable where their names fit."""
    assert normalize_path("README.md") == "README.md"
    assert normalize_path("nul.txt") == "nul.txt"
    assert normalize_path(unicodedata.normalize("NFD", "caf\u00e9")) == "cafe\u0301"
