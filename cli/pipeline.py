"""CI/CD steps: ``gate`` (eval requirements) and ``wait`` (a job or a rollout)."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import Duration
from registry import errors
from registry.client import Client, JobOut, RolloutOut, job_error
from registry.refs import parse_ref
from registry.services.gates import Gate, evaluate, parse_gate
from registry.statuses import GateVerdict, RolloutStatus

GATE_FAILED = errors.GateFailed.exit_code  # 7: registry.errors.EXIT_CODES


@dataclass
class Requirement:
    requirement: str
    value: float | None
    threshold: float | None
    verdict: str
    detail: str


def _baseline(client: Client, gate: Gate, adapter: str) -> tuple[float | None, str]:
    """The metric of the stable version of ``stable(channel)`` (default: prod)."""
    channel = gate.channel or "prod"
    try:
        stable = client.channel(f"{adapter}:{channel}").stable
    except errors.NotFound:
        return None, f"no channel {adapter}:{channel}"
    if stable is None:
        return None, f"{adapter}:{channel} has no stable version"
    metrics = client.version(f"{adapter}@{stable}").metrics
    return metrics.get(gate.key), f"stable({channel}) = @{stable}"


def check(client: Client, ref: str, texts: list[str]) -> list[Requirement]:
    version = client.version(ref)
    adapter = parse_ref(ref).adapter
    rows = []
    for text in texts:
        gate = parse_gate(text)
        if gate.source != "eval":
            raise errors.BadRequest(f"{text!r}: gate checks eval.* metrics; live.* metrics "
                                    "are gated by rollouts (lorareg promote --gate)")
        value = version.metrics.get(gate.key)
        baseline, where = _baseline(client, gate, adapter) if gate.relative else (None, "")
        verdict = evaluate(gate, value, baseline)
        detail = f"{verdict.detail}{f' ({where})' if where else ''}"
        rows.append(Requirement(text, value, verdict.threshold, verdict.verdict, detail))
    return rows


@click.command()
@click.argument("ref", metavar="REF")
@click.option("--require", "requirements", multiple=True, required=True,
              help='Requirement, e.g. "eval.accuracy >= 0.9" or '
                   '"eval.accuracy >= stable(prod) - 0.01" (repeatable).')
@json_option
@pass_app
def gate(app: App, ref: str, requirements: tuple[str, ...]) -> None:
    """Check REF's eval metrics against requirements; exit 7 (with a table) if any is not met.

    A requirement whose metric is missing counts as not met (inconclusive)."""
    rows = check(app.client(), ref, list(requirements))
    ok = all(r.verdict == GateVerdict.PASS for r in rows)
    if app.json:
        output.emit_json({"ref": ref, "passed": ok, "requirements": [asdict(r) for r in rows]})
    else:
        output.table(["REQUIREMENT", "VALUE", "THRESHOLD", "VERDICT"], [
            [r.requirement, _num(r.value), _num(r.threshold), r.verdict.upper()] for r in rows])
        app.say(f"{ref}: {'all requirements met' if ok else 'requirements NOT met'}")
    if not ok:
        sys.exit(GATE_FAILED)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@click.command()
@click.argument("target", metavar="job:ID|rollout:ID|ID")
@click.option("--timeout", type=Duration(), default="30m", show_default=True,
              help="Give up after (e.g. 30m).")
@json_option
@pass_app
def wait(app: App, target: str, timeout: float) -> None:
    """Block until a job or rollout finishes. Exit 0 on success (job succeeded, rollout
    promoted); 3 if cancelled/aborted; 4 or 6 if the job failed (bad input / otherwise);
    6 on timeout. A bare ID is a job."""
    kind, _, ident = target.rpartition(":")
    if kind not in ("", "job", "rollout") or not ident.isdigit():
        raise click.BadParameter("expected job:ID, rollout:ID or ID", param_hint="TARGET")
    final: RolloutOut | JobOut
    if kind == "rollout":
        final = _wait_rollout(app, int(ident), timeout)
    else:
        final = _wait_job(app, int(ident), timeout)
    if app.json:
        output.emit_json(final)


def _wait_job(app: App, job_id: int, seconds: float) -> JobOut:
    bar = app.percent_bar(f"job {job_id}")

    def show(job: JobOut) -> None:
        bar.n = round(100 * job.progress)
        bar.set_postfix_str(job.progress_message[:40], refresh=True)

    with bar:
        job = app.client().wait_job(job_id, timeout=seconds, progress=show)
    err = job_error(job)
    if err is not None:
        raise err
    app.note(f"job {job_id} succeeded")
    return job


def _wait_rollout(app: App, rollout_id: int, seconds: float) -> RolloutOut:
    bar = app.percent_bar(f"rollout {rollout_id}")

    def show(rollout: RolloutOut) -> None:
        bar.n = rollout.weight_bp // 100
        bar.set_postfix_str(str(rollout.status), refresh=True)

    with bar:
        rollout = app.client().wait_rollout(rollout_id, timeout=seconds, progress=show)
    status = rollout.status
    if status == RolloutStatus.ABORTED:
        raise errors.Conflict(f"rollout {rollout_id} was aborted: {rollout.reason}")
    if status != RolloutStatus.PROMOTED:
        raise errors.RegistryError(f"rollout {rollout_id} is still {status}; stopped waiting")
    app.note(f"rollout {rollout_id} promoted")
    return rollout


COMMANDS = (gate, wait)
