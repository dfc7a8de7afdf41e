"""Moving adapters: ``push`` a folder as a new version, ``pull`` a version into a folder."""

from __future__ import annotations

from pathlib import Path

import click

from cli import output
from cli.app import App, json_option, pass_app
from cli.params import labels_callback, load_metrics_file, metric_values
from registry.client import PulledArtifact, PushResult
from registry.statuses import VersionStatus


@click.command()
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--adapter", required=True, metavar="NS/NAME", help="Adapter to push a version of.")
@click.option("--base", required=True, metavar="HUB_ID@REV",
              help="Base model it was trained on, pinned to a commit.")
@click.option("--metrics", "metrics_file", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Eval results JSON ({name: number} or [{key, value}]).")
@click.option("--metric", "metric_pairs", multiple=True, metavar="K=V",
              help="A metric value (repeatable).")
@click.option("--label", "labels", multiple=True, callback=labels_callback, metavar="K=V",
              help="A version label (repeatable).")
@click.option("--git-commit", help="Provenance: commit of the training code.")
@click.option("--git-repo", help="Provenance: repository of the training code.")
@click.option("--ci-run-url", help="Provenance: URL of the CI run that trained it.")
@click.option("--ci-job", help="Provenance: CI job name.")
@click.option("--description", help="Adapter description, used if this push creates it.")
@click.option("--idempotency-key", metavar="KEY",
              help="Names this pipeline step: a retry returns the version it created "
                   "(the key reused with other content is a conflict, exit 3).")
@json_option
@pass_app
def push(
    app: App, folder: Path, adapter: str, base: str, metrics_file: Path | None,
    metric_pairs: tuple[str, ...], labels: dict[str, str], git_commit: str | None,
    git_repo: str | None, ci_run_url: str | None, ci_job: str | None, description: str | None,
    idempotency_key: str | None,
) -> None:
    """Push FOLDER (a PEFT adapter) as a new version; only missing blobs are uploaded.

    Pushing identical content again is safe: nothing is uploaded and the existing version
    is returned. With --json, prints the version plus created, uploaded_bytes and
    uploaded_digests.
    """
    metrics = load_metrics_file(metrics_file) if metrics_file else []
    metrics += [{"key": k, "value": v}
                for k, v in metric_values(metric_pairs, "'--metric'").items()]
    provenance = {k: v for k, v in {
        "git_commit": git_commit, "git_repo": git_repo, "ci_run_url": ci_run_url,
        "ci_job": ci_job, "source": "lorareg-cli",
    }.items() if v}
    client = app.client()
    client.safetensors_limits = app.safetensors_limits()
    with app.progress_bar("upload") as bar:
        result = client.push(
            folder, adapter, base, metrics=metrics, labels=labels, provenance=provenance,
            description=description, progress=bar, idempotency_key=idempotency_key,
        )
    _report_push(app, result)


def _report_push(app: App, result: PushResult) -> None:
    if app.json:
        output.emit_json(result)
        return
    uploaded = output.size(result.uploaded_bytes)
    if result.created:
        app.say(f"pushed {result.ref} ({len(result.files)} files, "
                f"{uploaded} uploaded, base {result.base.compat_status})")
    else:
        app.say(f"{result.ref} already holds this content; nothing new was created "
                f"({uploaded} uploaded)")


@click.command()
@click.argument("ref", metavar="REF")
@click.option("-o", "--output", "dest", required=True,
              type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--force", is_flag=True, help="Replace the folder if it exists.")
@click.option("--merged", is_flag=True,
              help="Pull REF merged into its base (after `lorareg merge`), not the adapter.")
@json_option
@pass_app
def pull(app: App, ref: str, dest: Path, force: bool, merged: bool) -> None:
    """Download version REF (ns/name@N or ns/name@latest) into a new folder, verified.

    Every file's sha256 is checked and the folder appears only when complete. An interrupted
    pull resumes where it stopped when run again. With --merged, the folder is the full model
    with the adapter merged in (loadable with transformers' from_pretrained); exit 2 if REF
    has not been merged yet.
    """
    with app.progress_bar("download") as bar:
        result = app.client().pull(ref, dest, progress=bar, overwrite=force, merged=merged)
    if isinstance(result, PulledArtifact):
        what = f"{result.ref} merged (artifact {result.id})"
    else:
        what = result.ref
        if result.status == VersionStatus.YANKED:
            click.echo(f"warning: {result.ref} is yanked: {result.yank_reason}", err=True)
    if app.json:
        output.emit_json(result)
        return
    app.say(f"pulled {what} into {result.path} ({len(result.files)} files, "
            f"{output.size(result.total_size)}; "
            f"{output.size(result.downloaded_bytes)} downloaded)")
