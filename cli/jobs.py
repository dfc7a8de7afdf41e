"""Merges and jobs: ``merge`` (optionally waiting), ``jobs ls|show|cancel|watch``.

Exit codes of ``merge --wait`` and ``jobs watch`` (the usual ones, read for a job):

====  ===================================================================================
0     the job succeeded (or the merge already existed)
3     the job was cancelled
4     the job failed on bad input: incompatible base, invalid adapter, or another failure
      the worker judged permanent (it did not retry)
6     the job failed after its retries (server, storage or worker trouble), or --timeout
      passed first (the job keeps running; ``lorareg jobs watch ID`` to follow it again)
====  ===================================================================================
"""

from __future__ import annotations

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import Duration
from registry.client import ArtifactOut, Client, JobOut, job_error
from registry.statuses import JOB_FINAL, JobStatus

JOB_STATUSES = [s.value for s in JobStatus]
WAIT_EPILOG = """\b
Exit codes when waiting:
  0  the job succeeded
  3  the job was cancelled
  4  it failed on bad input (incompatible base, invalid adapter; not retried)
  6  it failed after its retries, or --timeout passed first (the job keeps running)
"""


@click.command(epilog=WAIT_EPILOG)
@click.argument("ref", metavar="REF")
@click.option("--base", "base_id", type=click.IntRange(min=1), metavar="BASE_ID",
              help="Registered base to merge onto (same fingerprint as the version's base).")
@click.option("--wait", is_flag=True, help="Wait for the merge job to finish.")
@click.option("--timeout", type=Duration(), default="30m", show_default=True,
              help="With --wait: give up waiting after this long (90s, 30m, 2h).")
@json_option
@pass_app
def merge(app: App, ref: str, base_id: int | None, wait: bool, timeout: float) -> None:
    """Merge version REF into its base weights, as a job run by a worker.

    Idempotent: if REF is already merged onto these base weights, the artifact is printed
    at once; if a merge job is queued or running, that job is joined. Without --wait, prints
    the job id (follow it with `lorareg jobs watch ID`). With --wait, shows the job's
    progress on a TTY and exits with the job's outcome (see below). Pull the result with
    `lorareg pull REF --merged -o DIR`.

    With --json, prints ref, job_id, status, artifact_id and merged_fingerprint (plus the
    full job and artifact).
    """
    client = app.client()
    answer = client.merge(ref, base_id)
    artifact, job = answer.artifact, answer.job
    if artifact is not None:
        _report_merge(app, artifact.ref, job, artifact, "is already merged")
        return
    assert job is not None  # the API answers with an artifact or a job
    if not wait:
        verb = "queued" if answer.created else f"joined {job.status}"
        _report_merge(app, job.target, job, None,
                      f"{verb} merge job {job.id} (lorareg jobs watch {job.id})")
        return
    final = _watch(app, client, job.id, timeout)
    _raise_unless_succeeded(final)
    # The job's target names the version number, even when REF said @latest.
    _report_merge(app, job.target, final, client.merged(job.target), "merged")


def _report_merge(app: App, ref: str, job: JobOut | None, artifact: ArtifactOut | None,
                  what: str) -> None:
    if app.json:
        output.emit_json({
            "ref": ref,
            "job_id": job.id if job else (artifact.job_id if artifact else None),
            "status": job.status if job else JobStatus.SUCCEEDED,
            "artifact_id": artifact.id if artifact else None,
            "merged_fingerprint": artifact.merged_fingerprint if artifact else None,
            "job": job, "artifact": artifact,
        })
        return
    if artifact is None:
        app.say(f"{ref}: {what}")
        return
    app.say(f"{ref} {what}: artifact {artifact.id}, merged fingerprint "
            f"{artifact.merged_fingerprint} ({len(artifact.files)} files, "
            f"{output.size(artifact.total_size)}, base {artifact.base_id})")


def _watch(app: App, client: Client, job_id: int, timeout: float | None) -> JobOut:
    """Poll the job until it ends (or ``timeout``), with a progress bar on a TTY."""
    with app.percent_bar(f"job {job_id}") as bar:

        def show(job: JobOut) -> None:
            bar.set_description_str(f"job {job_id} {job.progress_message or job.status}"[:60])
            bar.n = round(100 * job.progress)
            bar.refresh()

        return client.wait_job(job_id, timeout, progress=show)


def _raise_unless_succeeded(job: JobOut) -> None:
    err = job_error(job)
    if err is not None:
        raise err


@click.group()
def jobs() -> None:
    """Jobs run by workers (merges): list, show, cancel, watch."""


@jobs.command("ls")
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs in this status.")
@click.option("--kind", help="Only jobs of this kind (e.g. merge).")
@click.option("--target", metavar="NS/NAME@N", help="Only jobs on this target.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@json_option
@pass_app
def jobs_ls(app: App, status: str | None, kind: str | None, target: str | None,
            limit: int | None) -> None:
    """List jobs, oldest first."""
    rows = list(app.client().jobs(status=status, kind=kind, target=target, limit=limit))
    if app.json:
        output.emit_json(rows)
    elif not rows:
        app.note("nothing found")
    else:
        output.table(
            ["ID", "KIND", "STATUS", "TARGET", "PROGRESS", "ATTEMPTS", "CREATED", "ERROR"],
            [[r.id, r.kind, r.status, r.target, _percent(r), f"{r.attempts}/{r.max_attempts}",
              output.when(r.created_at), output.short(r.error)] for r in rows],
        )


@jobs.command("show")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@pass_app
def jobs_show(app: App, job_id: int) -> None:
    """Show one job: status, progress, attempts, result or error."""
    j = app.client().job(job_id)
    if app.json:
        output.emit_json(j)
        return
    output.fields([
        ("id", j.id), ("kind", j.kind), ("status", j.status), ("target", j.target),
        ("progress", f"{_percent(j)} {j.progress_message}".strip()),
        ("attempts", f"{j.attempts}/{j.max_attempts}"),
        ("worker", j.worker_id),
        ("cancel asked", "yes" if j.cancel_requested else "no"),
        ("created by", j.created_by), ("created", output.when(j.created_at)),
        ("started", output.when(j.started_at)),
        ("finished", output.when(j.finished_at)),
        ("result", j.result), ("error", j.error),
    ])


@jobs.command("cancel")
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@pass_app
def jobs_cancel(app: App, job_id: int) -> None:
    """Cancel a job: a queued job at once, a running one between tensors.

    Exit 3 if the job already finished (succeeded, failed or cancelled).
    """
    j = app.client().cancel_job(job_id)
    if app.json:
        output.emit_json(j)
    elif j.status == JobStatus.CANCELLED:
        app.say(f"cancelled job {job_id}")
    else:
        app.say(f"asked job {job_id} to stop (it is {j.status}; "
                f"`lorareg jobs watch {job_id}` to see it end)")


@jobs.command("watch", epilog=WAIT_EPILOG)
@click.argument("job_id", metavar="ID", type=click.IntRange(min=1))
@click.option("--timeout", type=Duration(), help="Give up waiting after this long (90s, 30m).")
@json_option
@pass_app
def jobs_watch(app: App, job_id: int, timeout: float | None) -> None:
    """Follow a job until it ends, with a progress bar on a TTY; exit with its outcome."""
    final = _watch(app, app.client(), job_id, timeout)
    _raise_unless_succeeded(final)
    if app.json:
        output.emit_json(final)
    else:
        result = final.result or {}
        app.say(f"job {job_id} {final.status}: "
                + (", ".join(f"{k}={v}" for k, v in result.items()) or "no result"))


def _percent(job: JobOut) -> str:
    if job.status in JOB_FINAL and job.status != JobStatus.SUCCEEDED:
        return "-"
    return f"{job.progress:.0%}"
