"""The client answers typed models, and the CLI prints them as the API sent them.

* Every public method of :class:`registry.client.Client` is annotated to return models of
  :mod:`registry.wire` (or the client's extensions of them), lists or iterators of them, or a
  documented plain value; never ``dict``/``Any``, which ``mypy --strict`` cannot check the CLI's
  use of.
* ``registry.client`` imports neither the web framework nor the database layer.
* ``lorareg ... --json`` prints the document the API answered, byte for byte after parsing
  (the models round-trip the API's JSON), against a real server.
"""

from __future__ import annotations

import collections.abc
import inspect
import json
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import httpx
import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from cli.main import main
from registry import errors
from registry.client import Client
from tests.cli.conftest import BASE
from tests.fixtures.server import LiveServer

# Public methods whose answer is a plain value by nature, and why.
PLAIN_ANSWERS = {
    "pin_channel": "a version reference string (ns/name@N)",
    "served_name": "the name a router sends the engine (ns~adapter~N~digest12)",
    "report_live": "how many reports the server accepted",
    "missing_blobs": "the digests the server lacks",
    "revoke_token": "nothing (204)",
    "remove_webhook": "nothing (204)",
    "close": "nothing",
}
CONTAINERS = (list, collections.abc.Iterator)
PLAIN = (str, int, type(None))


def _typed(tp: Any) -> bool:
    """A model, a list/iterator/union of models (or of plain values)."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return all(_typed(arg) for arg in get_args(tp))
    if origin in CONTAINERS:
        return all(_typed(arg) for arg in get_args(tp))
    if origin is not None:
        return False
    return isinstance(tp, type) and (issubclass(tp, BaseModel) or tp in PLAIN)


def _models_only(tp: Any) -> bool:
    if tp is type(None):
        return True
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType, *CONTAINERS):
        return all(_models_only(arg) for arg in get_args(tp))
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _public_methods() -> list[tuple[str, Any]]:
    return [(name, fn) for name, fn in inspect.getmembers(Client, inspect.isfunction)
            if not name.startswith("_")]


def test_public_client_methods_return_models() -> None:
    methods = _public_methods()
    assert len(methods) > 60  # the whole surface, not an empty loop
    wrong = []
    for name, fn in methods:
        answer = get_type_hints(fn)["return"]
        ok = _typed(answer) if name in PLAIN_ANSWERS else _models_only(answer)
        if not ok:
            wrong.append(f"{name} -> {answer}")
    assert wrong == [], "public Client methods must answer models (registry.wire)"


def test_the_type_check_itself_refuses_dicts_and_any() -> None:
    for tp in (dict[str, Any], Any, list[dict[str, Any]], collections.abc.Iterator[dict[str, Any]],
               dict[str, Any] | None, typing.Mapping[str, Any], object):
        assert not _models_only(tp) and not _typed(tp), tp


def test_documented_plain_answers_are_still_methods() -> None:
    names = {name for name, _ in _public_methods()}
    assert set(PLAIN_ANSWERS) <= names


def test_importing_the_client_loads_no_server_code() -> None:
    code = ("import sys, registry.client; "
            "print(sorted(m for m in ('fastapi', 'starlette', 'sqlalchemy', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"


def test_an_answer_that_is_not_the_model_is_a_registry_error() -> None:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"version": 7, "surprise": True})

    with Client("http://registry.test", transport=httpx.MockTransport(handler)) as c, \
            pytest.raises(errors.RegistryError, match=r"GET /api/v1/whoami answered HTTP 200 "
                                                      r"with no WhoAmI: actor: Field required"):
        c.whoami()


# --------------------------------------------------------------- --json = the API's JSON


def _cli_json(server: LiveServer, *args: str) -> Any:
    env = {"LORAREG_URL": server.url, "LORAREG_TOKEN": server.admin_token}
    result = CliRunner().invoke(main, ["--json", *args], env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_json_output_is_the_document_the_api_sent(live_server: LiveServer, client: Client,
                                                  adapter_dir: Path) -> None:
    pushed = client.push(adapter_dir, "acme/bot", BASE, metrics={"accuracy": 0.9},
                         labels={"team": "nlp"}, description="a bot")
    client.configure_channel("acme/bot:prod", profile="any")
    client.log_metrics(pushed.ref, {"f1": 0.5}, dataset="heldout")
    api = httpx.Client(base_url=f"{live_server.url}/api/v1",
                       headers={"Authorization": f"Bearer {live_server.admin_token}"})
    with api:
        cases = [
            (("show", "acme/bot@1"), "/adapters/acme/bot/versions/1", None),
            (("ls", "acme/bot"), "/adapters/acme/bot/versions", "items"),
            (("ls", "acme"), "/adapters?namespace=acme", "items"),
            (("namespace", "ls"), "/namespaces", "items"),
            (("channel", "show", "acme/bot:prod"), "/adapters/acme/bot/channels/prod", None),
            (("channel", "ls", "acme/bot"), "/adapters/acme/bot/channels", "items"),
            (("history", "acme/bot:prod"), "/adapters/acme/bot/channels/prod/history", "items"),
            (("metrics", "show", "acme/bot@1"), "/adapters/acme/bot/versions/1/metrics", "items"),
            (("check", "acme/bot@1", "--profile", "any"),
             "/adapters/acme/bot/versions/1/check?profile=any", None),
            (("whoami",), "/whoami", None),
        ]
        for args, path, key in cases:
            sent = api.get(path).json()
            assert _cli_json(live_server, *args) == (sent[key] if key else sent), args
    # Answers the client adds to keep the server's fields as they were sent.
    shown = _cli_json(live_server, "show", "acme/bot@1")
    assert {k: v for k, v in pushed.model_dump(mode="json").items()
            if k not in ("uploaded_bytes", "uploaded_digests", "created", "metrics")} == {
        k: v for k, v in shown.items() if k not in ("created", "metrics")}
