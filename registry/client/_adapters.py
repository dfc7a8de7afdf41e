"""Namespaces and adapters (the names versions are pushed under)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from registry.client._http import Http, label_params, query
from registry.client._paths import adapter_path
from registry.wire import AdapterOut, NamespaceOut

Labels = Mapping[str, str] | Sequence[str]


def namespaces(http: Http) -> list[NamespaceOut]:
    return list(http.paginate("/api/v1/namespaces", NamespaceOut, [], None))


def create_namespace(http: Http, name: str, description: str) -> NamespaceOut:
    return http.post("/api/v1/namespaces", {"name": name, "description": description},
                     NamespaceOut)


def adapters(http: Http, namespace: str | None, label: Labels | None, q: str | None,
             base: str | None, sort: str | None, limit: int | None) -> Iterator[AdapterOut]:
    params = query(namespace=namespace, label=label_params(label), q=q, base=base, sort=sort)
    return http.paginate("/api/v1/adapters", AdapterOut, params, limit)


def adapter(http: Http, name: str) -> AdapterOut:
    return http.get(adapter_path(name), AdapterOut)


def update_adapter(http: Http, name: str, description: str | None,
                   labels: Mapping[str, str] | None, remove_labels: Sequence[str] | None
                   ) -> AdapterOut:
    body: dict[str, Any] = {}
    if description is not None:
        body["description"] = description
    if labels is not None:
        body["labels"] = dict(labels)
    if remove_labels is not None:
        body["remove_labels"] = list(remove_labels)
    return http.call("PATCH", adapter_path(name), AdapterOut, json=body, idempotent=False)
