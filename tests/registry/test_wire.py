"""registry.wire is what /openapi.json promises: every JSON answer has a named, typed schema
(paginated lists as ``Page_<Item>_``, complete ones as ``Items_<Item>_``), and each component
that carries a wire model's name lists exactly that model's fields, so a generated client and
:mod:`registry.client` parse the same documents."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from pydantic import BaseModel

from registry import wire
from tests.fixtures.api import Api


@pytest.fixture
def spec(api: Api) -> dict[str, Any]:
    document: dict[str, Any] = api.client.get("/openapi.json").json()
    return document


def _json_answers(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            for status, answer in op.get("responses", {}).items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if status.startswith("2") and schema is not None:
                    out.append((f"{method.upper()} {path} {status}", schema))
    return out


def _named(schema: dict[str, Any]) -> bool:
    """A component, or an array of components: never an inline or untyped object."""
    if "$ref" in schema:
        return True
    return schema.get("type") == "array" and "$ref" in schema.get("items", {})


def test_every_json_answer_has_a_named_schema(spec: dict[str, Any]) -> None:
    answers = _json_answers(spec)
    assert len(answers) > 40  # the whole API, not an empty loop
    assert [where for where, schema in answers if not _named(schema)] == []


def test_lists_are_typed_pages(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    lists = {name: schema for name, schema in components.items()
             if name.startswith(("Page_", "Items_"))}
    assert {"Page_VersionOut_", "Page_AdapterOut_", "Page_JobOut_", "Page_AuditOut_",
            "Items_MetricOut_", "Items_GateEvaluationOut_"} <= set(lists)
    for name, schema in lists.items():
        item = name.split("_")[1]
        assert schema["properties"]["items"]["items"] == {
            "$ref": f"#/components/schemas/{item}"}, name
    assert "Page" not in components  # no untyped page is left


def test_components_are_the_wire_models(spec: dict[str, Any]) -> None:
    components = spec["components"]["schemas"]
    models = {name: model for name, model in inspect.getmembers(wire, inspect.isclass)
              if issubclass(model, BaseModel) and model.__module__ == wire.__name__
              and name not in ("Page", "Items")}
    shown = {name: model for name, model in models.items() if name in components}
    assert len(shown) > 30
    for name, model in shown.items():
        assert set(components[name]["properties"]) == set(model.model_fields), name
