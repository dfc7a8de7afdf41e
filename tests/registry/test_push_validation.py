"""Poison at push, through the real API (issue 15, items 3 and 7): an ``adapter_config.json`` the
registry could store but not serve back, and file names some system cannot materialize, are
refused with a 422 before anything is written; a bad config already stored (by an older
release) degrades its own item, never a whole listing."""

from __future__ import annotations

import json
import unicodedata
from typing import Any

import pytest
from sqlalchemy import text

from registry.models import Adapter, AdapterVersion, AuditEvent
from tests.fixtures.adapters import adapter_files, lora_config
from tests.fixtures.api import Api
from tests.registry.test_api import assert_problem, h, upload_all

BACKENDS = ["sqlite", "postgresql"]
BASE = {"hub_id": "tiny/llama", "revision": "abc"}


def push_files(api: Api, files: dict[str, bytes], adapter: str = "acme/bot") -> Any:
    entries = upload_all(api, api.admin, files)
    # json.dumps escapes non-ASCII, so a lone surrogate in a path travels as "\ud800".
    return api.client.post(f"/api/v1/adapters/{adapter}/versions",
                           content=json.dumps({"files": entries, "base": BASE}),
                           headers={**h(api.admin), "Content-Type": "application/json"})


def counts(api: Api) -> tuple[int, int, int]:
    return api.count(Adapter), api.count(AdapterVersion), api.count(AuditEvent)


def config_with(value_json: str, key: str = "x") -> bytes:
    """A valid LoRA config plus one member whose JSON text is ``value_json``, verbatim."""
    head = json.dumps(lora_config())[:-1]
    return f"{head}, {json.dumps(key)}: {value_json}}}".encode()


POISONED_CONFIGS = {
    "lone surrogate": (config_with('"\\ud800"'), "lone surrogate U+D800"),
    "lone surrogate in a key": (config_with("1", key="\udc00"), "lone surrogate U+DC00"),
    "900 levels deep": (config_with("[" * 900 + "]" * 900), "nested deeper than 32 levels"),
    "100k levels deep": (config_with("[" * 100_000 + "]" * 100_000),
                         "nested deeper than 32 levels"),
    "5000-digit integer": (config_with("1" * 5000), "integer of 5000 digits"),
    "integer past 64 bits": (config_with(str(2**63)), "outside 64 bits"),
    "NaN": (config_with("NaN"), "NaN"),
    "Infinity": (config_with("[-Infinity]"), "-Infinity"),
    "overflowing float": (config_with("1e999"), "overflows a double"),
}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_poisoned_config_is_422_and_writes_nothing(api: Api) -> None:
    before = counts(api)
    for case, (raw, reason) in POISONED_CONFIGS.items():
        r = push_files(api, adapter_files(extra={"adapter_config.json": raw}))
        body = assert_problem(r, 422, "invalid_adapter")
        assert "adapter_config.json" in body["detail"] and reason in body["detail"], case
        assert counts(api) == before, case
    # Another namespace's writer is refused before the content is even looked at.
    globex = api.token("writer", "globex")
    raw = POISONED_CONFIGS["lone surrogate"][0]
    entries = upload_all(api, api.admin, adapter_files(extra={"adapter_config.json": raw}))
    before = counts(api)
    r = api.client.post("/api/v1/adapters/acme/bot/versions",
                        json={"files": entries, "base": BASE}, headers=h(globex))
    assert_problem(r, 403)
    assert counts(api) == before
    # A config as deep as PEFT ever writes, with large but 64-bit numbers, is still fine.
    fine = config_with(json.dumps({"a": {"b": [[1, 2**62, -(2**63), 1e300, "caf\u00e9"]]}}))
    assert push_files(api, adapter_files(extra={"adapter_config.json": fine})).status_code == 201


def _poison(api: Api, version: int, raw: str) -> None:
    """Store ``raw`` as a version's config directly, as a release without the checks did."""
    sql = "UPDATE adapter_versions SET peft_config = {} WHERE number = :n"
    value = "CAST(:v AS json)" if api.engine.dialect.name == "postgresql" else ":v"
    with api.engine.begin() as conn:
        conn.execute(text(sql.format(value)), {"v": raw, "n": version})


# What a release without the checks stored (PostgreSQL's json type refuses NaN and non-JSON).
STORED_POISON = {
    "lone surrogate": '{"x": "\\ud800"}',
    "900 levels deep": '{"x": ' + "[" * 900 + "]" * 900 + "}",
    "5000 levels deep": '{"x": ' + "[" * 5000 + "]" * 5000 + "}",
    "5000-digit integer": '{"x": ' + "1" * 5000 + "}",
    "not an object": "[1, 2]",
}
SQLITE_ONLY_POISON = {"NaN": '{"x": NaN}', "not JSON": "{not json"}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_bad_stored_config_degrades_one_item_not_the_listing(api: Api, backend: str) -> None:
    assert push_files(api, adapter_files(seed=1)).status_code == 201
    assert push_files(api, adapter_files(seed=2)).status_code == 201
    assert push_files(api, adapter_files(seed=3), adapter="globex/bot").status_code == 201
    cases = {**STORED_POISON, **(SQLITE_ONLY_POISON if backend == "sqlite" else {})}
    for case, raw in cases.items():
        _poison(api, 2, raw)
        for url in ("/api/v1/adapters/acme/bot/versions/2",
                    "/api/v1/adapters/acme/bot/versions/latest"):
            r = api.client.get(url, headers=h(api.admin))
            assert r.status_code == 200, (case, url, r.text[:300])
            _assert_degraded(r.json(), case)
        for url in ("/api/v1/adapters/acme/bot/versions", "/api/v1/versions"):
            r = api.client.get(url, headers=h(api.admin))
            assert r.status_code == 200, (case, url, r.text[:300])
            items = {i["ref"]: i for i in r.json()["items"]}
            _assert_degraded(items["acme/bot@2"], case)
            assert items["acme/bot@1"]["peft_config"]["r"] == 4
            assert items["acme/bot@1"]["peft_config_error"] is None
        assert api.client.get("/api/v1/adapters", headers=h(api.admin)).status_code == 200


def _assert_degraded(item: dict[str, Any], case: str) -> None:
    assert item["peft_config"] is None, case
    assert item["peft_config_error"].startswith("the stored adapter_config.json"), case
    assert [f["path"] for f in item["files"]] == ["adapter_config.json",
                                                  "adapter_model.safetensors"], case


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_version_with_a_bad_stored_config_can_be_yanked(api: Api) -> None:
    """Yanking is what an operator does to such a version: it must work, and only in scope."""
    assert push_files(api, adapter_files()).status_code == 201
    _poison(api, 1, STORED_POISON["5000 levels deep"])
    globex = api.token("writer", "globex")
    before = counts(api)
    r = api.client.post("/api/v1/adapters/acme/bot/versions/1/yank", json={"reason": "poison"},
                        headers=h(globex))
    assert_problem(r, 403)
    assert counts(api) == before
    r = api.client.post("/api/v1/adapters/acme/bot/versions/1/yank", json={"reason": "poison"},
                        headers=h(api.admin))
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "yanked" and r.json()["peft_config"] is None


NFD_CAFE = unicodedata.normalize("NFD", "caf\u00e9.txt")
UNPORTABLE = {
    "300-byte name": (["a" * 300 + ".txt"], "at most 255 bytes"),
    "300-byte name in UTF-8": (["\u00e9" * 150], "at most 255 bytes"),
    # 302 characters (the request schema's limit is 512), 602 bytes of UTF-8
    "path over 512 bytes": (["/".join(["\u00e9" * 100] * 3)], "longer than 512 bytes"),
    "file and folder": (["conf", "conf/x.txt"], "both a file and the folder"),
    "case": (["README.md", "readme.md"], "differ only by case"),
    "case of a folder": (["Docs/a.md", "docs/b.md"], "differ only by case"),
    "NFD": ([NFD_CAFE], "not in Unicode NFC form"),
    "NFC and NFD": (["caf\u00e9.txt", NFD_CAFE], "not in Unicode NFC form"),
    "zero-width space": (["read\u200bme.md"], "U+200B"),
    "zero-width joiner": (["a\u200db.txt"], "U+200D"),
    "word joiner": (["a\u2060b.txt"], "U+2060"),
    "BOM": (["\ufeffnotes.txt"], "U+FEFF"),
    "bidi override": (["evil\u202etxt.exe"], "U+202E"),
    "bidi isolate": (["x\u2066y.txt"], "U+2066"),
    "NEL": (["a\u0085b.txt"], "U+0085"),
    "line separator": (["a\u2028b.txt"], "U+2028"),
    "paragraph separator": (["a\u2029b.txt"], "U+2029"),
    "CON": (["CON"], "reserves for a device"),
    "nul with extension": (["nul.txt"], "reserves for a device"),
    "COM1 in a folder": (["logs/com1.json"], "reserves for a device"),
    "LPT9": (["LPT9.md"], "reserves for a device"),
    "trailing dot": (["notes."], "ending in a dot or space"),
    "trailing space in a folder": (["docs /a.md"], "ending in a dot or space"),
    **{f"{c!r}": ([f"ab{c}c.txt"], "Windows does not allow") for c in '<>:"|?*'},
    "backslash": (["a\\b.txt"], "backslash"),
}


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_unportable_paths_are_422_and_write_nothing(api: Api) -> None:
    before = counts(api)
    for case, (paths, reason) in UNPORTABLE.items():
        extra = {p: f"file {i}".encode() for i, p in enumerate(paths)}
        body = assert_problem(push_files(api, adapter_files(extra=extra)), 422, "invalid_path")
        assert reason in body["detail"], (case, body["detail"])
        assert any(repr(p)[1:-1][:60] in body["detail"] for p in paths), (case, body["detail"])
        assert "\n" not in body["detail"]
        assert counts(api) == before, case
    # Not a string at all to the request schema (check_portable refuses it too, client-side).
    r = push_files(api, adapter_files(extra={"a\ud800.txt": b"s"}))
    assert "path" in assert_problem(r, 422, "validation_failed")["detail"]
    assert counts(api) == before
    globex = api.token("writer", "globex")
    entries = upload_all(api, api.admin, adapter_files(extra={"CON": b"x"}))
    before = counts(api)
    r = api.client.post("/api/v1/adapters/acme/bot/versions",
                        json={"files": entries, "base": BASE}, headers=h(globex))
    assert_problem(r, 403)
    assert counts(api) == before


def test_portable_names_are_accepted(api: Api) -> None:
    extra = {"README.md": b"# bot", "checkpoint-1/optimizer.pt": b"o", "caf\u00e9.txt": b"c",
             "\u65e5\u672c\u8a9e/\u8aac\u660e.md": b"j", "con_notes.txt": b"n", "x" * 255: b"x",
             "straight/README": b"r", ".hidden": b"h", "a b.txt": b"s"}
    r = push_files(api, adapter_files(extra=extra))
    assert r.status_code == 201, r.text
    assert {f["path"] for f in r.json()["files"]} >= set(extra)
