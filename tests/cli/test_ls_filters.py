"""``lorareg ls --search/--base/--adapters``: the CLI lists adapters through the same API filters
as the UI (search in names and descriptions, any case; a version on a base), against uvicorn on
PostgreSQL; ``--base`` alone still lists versions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from registry.db import make_engine, make_session_factory, transaction
from tests.fixtures.server import LiveServer
from tests.ui.test_listing_parity import SEEDS, expected, seed

Run = Callable[..., Result]


@pytest.fixture
def seeded_db_url(fresh_db_url: str) -> str:
    engine = make_engine(fresh_db_url)
    with transaction(make_session_factory(engine)) as session:
        seed(session)
    engine.dispose()
    return fresh_db_url


@pytest.fixture
def cli(seeded_db_url: str, live_server: LiveServer, tmp_path: Path) -> Run:
    env = {"LORAREG_URL": live_server.url, "LORAREG_TOKEN": live_server.admin_token,
           "LORAREG_CONFIG": str(tmp_path / "cli.json")}

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env)

    return run


def names(result: Result) -> set[str]:
    assert result.exit_code == 0, result.stderr
    return {row["name"] for row in json.loads(result.stdout)}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_ls_search_and_base_filter_adapters(cli: Run) -> None:
    assert names(cli("--json", "ls", "--search", "ROUT", "--limit", "500")) == expected(
        {"q": "rout"}, None)
    assert names(cli("--json", "ls", "beta", "--search", "rout")) == expected(
        {"q": "rout", "namespace": "beta"}, None)
    assert names(cli("--json", "ls", "--search", "rout", "--base", "tiny/llama")) == expected(
        {"q": "rout", "base": "tiny/llama"}, None)
    on_def = names(cli("--json", "ls", "--adapters", "--base", "tiny/llama@def"))
    assert on_def == expected({"base": "tiny/llama@def"}, None) and on_def
    versions = json.loads(cli("--json", "ls", "--base", "tiny/llama@def").stdout)
    assert {v["ref"].partition("@")[0] for v in versions} == on_def  # --base alone: versions
    human = cli("ls", "--search", "routing")
    assert human.exit_code == 0 and human.stdout.splitlines()[0].split()[0] == "ADAPTER"
    assert {r.name for r in SEEDS if "routing" in r.description.lower()} <= {
        line.split()[0] for line in human.stdout.splitlines()[1:]}


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_ls_search_refuses_version_filters(cli: Run) -> None:
    for args in (["ls", "--search", "x", "--status", "active"],
                 ["ls", "acme/Router-21", "--search", "x"],
                 ["ls", "--adapters", "--metric", "accuracy>=0.9"]):
        result = cli(*args)
        assert result.exit_code == 1, (args, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "--search and --adapters list adapters" in lines[0]
