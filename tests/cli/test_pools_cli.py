"""``lorareg pool ...``, ``lorareg check --pool`` and ``lorareg resolve`` served names, against one
real uvicorn server on PostgreSQL shared by the module (every test has its own names)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import main
from registry.served_names import parse_served_name
from tests.conftest import PgDatabases
from tests.fixtures.adapters import adapter_files, lora_config, lora_tensors
from tests.fixtures.server import LiveServer, tiny_base_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[LiveServer]:
    """uvicorn (tokens required) on a fresh database with the tiny base registered."""
    with tiny_base_server(pg_databases.fresh(), tmp_path_factory.mktemp("pools-cli")) as srv:
        yield srv


class Cli:
    def __init__(self, server: LiveServer, tmp: Path) -> None:
        self.env, self.tmp = dict(server.env), tmp

    def __call__(self, *args: str, token: str | None = None) -> Result:
        env = {**self.env, **({"LORAREG_TOKEN": token} if token else {})}
        return CliRunner().invoke(main, list(args), env=env)

    def ok(self, *args: str) -> Any:
        result = self("--json", *args)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return json.loads(result.stdout)

    def push(self, adapter: str, seed: int, r: int = 4) -> int:
        folder = self.tmp / f"{adapter.replace('/', '_')}-{seed}"
        folder.mkdir()
        files = adapter_files(r=r, seed=seed, config=lora_config(r),
                              tensors=lora_tensors(r, seed=seed))
        for name, data in files.items():
            (folder / name).write_bytes(data)
        out = self.ok("push", str(folder), "--adapter", adapter, "--base", "tiny/llama@abc")
        assert out["base"]["compat_status"] == "verified"
        return int(out["version"])


@pytest.fixture
def cli(server: LiveServer, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path)


def one_error(result: Result, code: int) -> str:
    assert result.exit_code == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


CREATE = ("pool", "create", "--base", "tiny/llama@abc", "--model-id", "/models/llama",
          "--dtype", "bfloat16", "--max-loras", "2")


def test_a_pool_from_creation_to_a_refused_and_an_accepted_promotion(cli: Cli) -> None:
    v1, v2 = cli.push("team/bot", 1), cli.push("team/bot", 2, r=32)
    created = cli("pool", "create", "team/gpu-a", *CREATE[2:], "--served-model-name", "llama")
    assert created.exit_code == 0, created.stderr
    assert "created pool team/gpu-a" in created.stdout
    assert [p["name"] for p in cli.ok("pool", "ls", "-n", "team")] == ["team/gpu-a"]
    cli.ok("promote", f"team/bot@{v1}", "--channel", "prod", "--now")
    assert cli.ok("pool", "bind", "team/gpu-a", "team/bot:prod")["channels"] == ["team/bot:prod"]

    line = one_error(cli("promote", f"team/bot@{v2}", "--channel", "prod", "--now"), 4)
    assert "pool team/gpu-a" in line and "rank 32 exceeds the max LoRA rank 16" in line
    refused = cli("check", f"team/bot@{v2}", "--pool", "team/gpu-a")
    assert refused.exit_code == 4 and "rank 32" in refused.stdout  # the problems, listed
    accepted = cli("check", "team/bot:prod", "--pool", "team/gpu-a")
    assert accepted.exit_code == 0 and "can be served by pool team/gpu-a as team~bot~1~" in (
        accepted.stdout)

    assert cli.ok("pool", "set", "team/gpu-a", "--max-lora-rank", "32")["max_lora_rank"] == 32
    cli.ok("promote", f"team/bot@{v2}", "--channel", "prod", "--now")
    desired = cli.ok("pool", "desired", "team/gpu-a")
    assert [m["ref"] for m in desired["members"]] == [f"team/bot@{v2}"]
    assert [m["ref"] for m in desired["left"]] == [f"team/bot@{v1}"]
    table = cli("pool", "desired", "team/gpu-a", "--left")
    assert desired["members"][0]["served_name"] in table.stdout and "left:" in table.stdout

    resolved = cli.ok("resolve", "team/bot:prod")
    assert resolved["served_name"] == desired["members"][0]["served_name"]
    assert parse_served_name(resolved["served_name"])[:3] == ("team", "bot", v2)
    assert f"served as {resolved['served_name']}" in cli("resolve", "team/bot:prod").stdout

    assert cli.ok("pool", "pin", "team/gpu-a", f"team/bot@{v1}")["pinned"] == [f"team/bot@{v1}"]
    shown = cli("pool", "show", "team/gpu-a")
    assert "pinned:" in shown.stdout and f"team/bot@{v1}" in shown.stdout
    assert cli.ok("pool", "unpin", "team/gpu-a", f"team/bot@{v1}")["pinned"] == []
    assert cli.ok("pool", "unbind", "team/gpu-a", "team/bot:prod")["channels"] == []


def test_pool_refusals_exit_with_the_documented_codes(cli: Cli, server: LiveServer) -> None:
    cli.push("solo/bot", 1)
    assert cli("pool", "create", "solo/gpu", *CREATE[2:]).exit_code == 0
    assert cli("pool", "create", "solo/gpu", *CREATE[2:], "--max-lora-rank", "48").exit_code == 1
    assert cli("pool", "create", "solo/gpu2", *CREATE[2:],
               "--max-adapter-memory", "lots").exit_code == 1
    one_error(cli("pool", "create", "solo/gpu", *CREATE[2:]), 3)  # exists
    one_error(cli("pool", "create", "Solo/gpu", *CREATE[2:]), 4)
    one_error(cli("pool", "create", "solo/gpu3", *CREATE[2:], "--target-modules",
                  "mlp.up_proj"), 4)
    one_error(cli("pool", "show", "solo/none"), 2)
    one_error(cli("pool", "bind", "solo/gpu", "solo/bot"), 4)  # not a channel
    one_error(cli("pool", "pin", "solo/gpu", "solo/bot@9"), 2)
    with_other = cli("--json", "token", "create", "--name", "outsider", "--role", "admin",
                     "--namespace", "elsewhere")
    assert with_other.exit_code == 0, with_other.stderr
    outsider = json.loads(with_other.stdout)["token"]
    one_error(cli("pool", "bind", "solo/gpu", "solo/bot:prod", token=outsider), 5)
    one_error(cli("pool", "set", "solo/gpu", "--max-lora-rank", "64", token=outsider), 5)
    assert cli.ok("pool", "show", "solo/gpu")["channels"] == []
