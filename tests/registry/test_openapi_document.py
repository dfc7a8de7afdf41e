"""``/openapi.json`` tells the truth about errors and non-JSON answers (registry/api/problems.py).

The fuzz test (test_openapi_fuzz.py) checks real answers against the document; these tests pin
what the document must say, including answers the fuzzer does not reach (401, 307, 503).
"""

from __future__ import annotations

from typing import Any

import pytest

from registry import errors
from registry.api.problems import PROBLEM
from tests.fixtures.api import Api

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
BLOB = "/api/v1/blobs/{digest}"


@pytest.fixture
def spec(api: Api) -> dict[str, Any]:
    document: dict[str, Any] = api.client.get("/openapi.json").json()
    return document


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in spec["paths"].items()
            for method, op in item.items()]


def test_every_error_is_a_documented_problem(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert {"type", "title", "status", "code", "detail"} <= set(schemas["Problem"]["required"])
    assert "HTTPValidationError" not in schemas  # FastAPI's 422, which we never send
    for method, path, op in operations(spec):
        statuses = {int(code) for code in op["responses"]}
        assert 500 in statuses, (method, path)
        if op.get("parameters") or "requestBody" in op:
            assert {400, 422} <= statuses, (method, path)
        if "requestBody" in op:
            assert 413 in statuses, (method, path)
        if any(p["in"] == "path" for p in op.get("parameters", [])):
            assert 404 in statuses, (method, path)
        for code, answer in op["responses"].items():
            if int(code) >= 400:
                assert list(answer["content"]) == [PROBLEM], (method, path)
                assert answer["content"][PROBLEM]["schema"] == PROBLEM_REF, (method, path)


def test_every_documented_problem_code_is_an_error_class(spec: dict[str, Any]) -> None:
    """Each error answer names, as examples, the codes of the classes that answer with its
    status; each example is that class's problem document; every class the API sends is
    documented, and no class that only the client raises."""
    examples = spec["components"]["examples"]
    sent = {cls.code for cls in errors.classes() if not cls.client_side}
    assert set(examples) == sent
    for code, example in examples.items():
        cls = errors.for_code(code)
        assert cls is not None and example["value"] == cls(cls.title).to_problem(), code
    documented: set[str] = set()
    for method, path, op in operations(spec):
        for status, answer in op["responses"].items():
            if int(status) < 400:
                continue
            named = answer["content"][PROBLEM]["examples"]
            assert named, (method, path, status)
            for code, ref in named.items():
                assert ref == {"$ref": f"#/components/examples/{code}"}, (method, path)
                cls = errors.for_code(code)
                assert cls is not None and cls.status_code == int(status), (method, path, code)
                documented.add(code)
    # Answered by routing or by parts of the app no operation declares on its own:
    undeclared = {"method_not_allowed", "precondition_failed"}
    assert documented == sent - undeclared
    assert {cls.code for cls in errors.classes() if cls.client_side} == {
        "engine_refused", "engine_unavailable", "usage_error", "gate_failed"}


def test_operations_that_know_their_caller_document_401_and_403(spec: dict[str, Any]) -> None:
    anonymous = {("get", "/healthz"), ("get", "/readyz"), ("get", "/metrics"),
                 ("get", "/api/v1/version")}
    for method, path, op in operations(spec):
        if (method, path) in anonymous:
            assert "401" not in op["responses"] and "security" not in op, (method, path)
            continue
        assert {"401", "403"} <= set(op["responses"]), (method, path)
        assert op["responses"]["401"]["headers"]["WWW-Authenticate"]["required"]
        assert op["security"] == [{"ApiToken": []}], (method, path)
    assert spec["components"]["securitySchemes"]["ApiToken"] == {
        "type": "http", "scheme": "bearer",
        "description": "An API token `lrg_<id>_<secret>` (lorareg token create)"}


def test_declared_statuses(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    assert "409" in paths["/api/v1/namespaces"]["post"]["responses"]
    assert "409" in paths["/api/v1/adapters/{ns}/{name}/channels/{channel}/promote"]["post"][
        "responses"]
    assert "503" in paths["/readyz"]["get"]["responses"]
    assert "404" in paths["/api/v1/metrics/live"]["post"]["responses"]
    etag = paths["/api/v1/adapters/{ns}/{name}/channels/{channel}"]["get"]["responses"]["200"]
    assert etag["headers"]["ETag"]["required"]


def test_blob_download_is_binary(spec: dict[str, Any]) -> None:
    get = spec["paths"][BLOB]["get"]["responses"]
    for code in ("200", "206"):
        assert list(get[code]["content"]) == ["application/octet-stream"]
        assert get[code]["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert get["206"]["headers"]["Content-Range"]["required"]
    assert "content" not in get["304"]
    assert "Location" in get["307"]["headers"]
    assert get["416"]["headers"]["Content-Range"]["required"]
    head = spec["paths"][BLOB]["head"]["responses"]
    assert "content" not in head["200"]
    assert "content" not in head["206"]
    names = {p["name"] for p in spec["paths"][BLOB]["get"]["parameters"]}
    assert {"Range", "If-None-Match"} <= names


def test_metrics_are_text(spec: dict[str, Any]) -> None:
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == [
        "text/plain"]


def test_the_document_is_valid_openapi(spec: dict[str, Any]) -> None:
    # openapi-spec-validator comes with moto[server] (a test dependency).
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(spec)


def test_real_errors_match_the_document(api: Api) -> None:
    """The answers the document describes are the ones sent: 401 (no token), 422, 404."""
    r = api.client.get("/api/v1/whoami")
    assert r.status_code == 401
    assert r.headers["content-type"] == PROBLEM
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["code"] == "unauthenticated"
    auth = {"Authorization": f"Bearer {api.admin}"}
    r = api.client.post("/api/v1/namespaces", json={"name": 5}, headers=auth)
    assert r.status_code == 422
    assert r.headers["content-type"] == PROBLEM
    assert {"type", "title", "status", "code", "detail", "errors"} <= set(r.json())
    r = api.client.get("/api/v1/blobs/" + "0" * 64, headers=auth)
    assert (r.status_code, r.headers["content-type"]) == (404, PROBLEM)
