"""``lorareg agent``: keep one serving replica in step with its pool (registry.agent)."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click

from cli.app import App, pass_app
from cli.params import Duration
from registry.agent import Agent, AgentOptions, default_replica_id
from registry.refs import parse_pool_name

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class ByteSize(click.ParamType[int]):
    """Bytes, written as 123, 512K, 20M, 10G (binary units, optional trailing B or iB)."""

    name = "bytes"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.IGNORECASE)
        if match is None:
            self.fail(f"{value!r} is not a size like 500M or 10G", param, ctx)
        return int(match.group(1)) * _UNITS[match.group(2).upper()]


@click.command()
@click.option("--pool", required=True, metavar="NS/POOL", help="The pool this replica serves.")
@click.option("--engine-url", default=None, metavar="URL",
              help="vLLM with runtime LoRA updating on (VLLM_ALLOW_RUNTIME_LORA_UPDATING=True); "
                   "without it, only the filesystem-resolver folder (--cache-dir) is kept.")
@click.option("--engine-api-key", envvar="LORAREG_VLLM_API_KEY", default=None, metavar="KEY",
              help="vLLM's --api-key, if it has one [env LORAREG_VLLM_API_KEY].")
@click.option("--model-dir", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="The base weights the engine serves: hashed and compared with the pool's.")
@click.option("--cache-dir", required=True, metavar="DIR",
              type=click.Path(file_okay=False, path_type=Path),
              help="Where adapters are pulled (vLLM's VLLM_LORA_RESOLVER_CACHE_DIR).")
@click.option("--replica-id", default=None, metavar="ID",
              help="This replica's id [default: hostname@engine host:port].")
@click.option("--interval", type=Duration(), default=2.0, show_default="2s",
              help="Heartbeat and long-poll interval.")
@click.option("--cache-limit", type=ByteSize(), default=None, metavar="BYTES",
              help="Evict unused cache folders, least recently used first, beyond this size.")
@pass_app
def agent(app: App, pool: str, engine_url: str | None, engine_api_key: str | None,
          model_dir: Path, cache_dir: Path, replica_id: str | None, interval: float,
          cache_limit: int | None) -> None:
    """Keep this replica's adapters in step with pool NS/POOL until SIGTERM.

    Verifies the base weights in --model-dir against the pool's base (loads nothing on a
    mismatch), pulls the desired versions into --cache-dir (verified, atomic), loads and
    unloads them through --engine-url after the pool's drain, and reports its residency
    (what `lorareg pool status` and `lorareg where` show) every --interval.
    """
    parse_pool_name(pool)
    options = AgentOptions(
        pool=pool, model_dir=model_dir, cache_dir=cache_dir, engine_url=engine_url,
        engine_api_key=engine_api_key, interval=interval, cache_limit=cache_limit,
        replica_id=replica_id or default_replica_id(engine_url, cache_dir),
        fingerprint_cache=app.fingerprint_cache_path())
    runner = Agent(app.client(), options, log=lambda line: click.echo(line, err=True))

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        runner.stop()

    signal.signal(signal.SIGTERM, on_term)
    runner.run()
