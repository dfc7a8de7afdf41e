"""Base models: ``base register`` / ``base ls`` / ``base show``, and ``verify`` (does a local
base folder hold the weights a version was verified against?)."""

from __future__ import annotations

from pathlib import Path

import click

from cli import output
from cli.app import App, json_option, pass_app
from registry.client import BaseRefOut, Client, RegisteredBase


def _client(app: App) -> Client:
    client = app.client()
    client.fingerprint_cache_path = app.fingerprint_cache_path()
    return client


@click.group()
def base() -> None:
    """Base models: the weights adapters are trained on, identified by fingerprint."""


@base.command("register")
@click.argument("folder", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", "hub_id", metavar="HUB_ID", help="Hub id of the base, e.g. org/name.")
@click.option("--revision", metavar="REV", help="Commit hash the weights come from.")
@click.option("--hf-cache", "hf_spec", metavar="ORG/NAME@REV",
              help="Register a snapshot of the local Hugging Face cache instead of FOLDER "
                   "(offline; the revision recorded is the commit it resolves to).")
@click.option("--upload", is_flag=True,
              help="Also store every file of the base, so workers need no local copy.")
@click.option("--no-cache", is_flag=True, help="Hash every tensor again (no fingerprint cache).")
@json_option
@pass_app
def register(
    app: App, folder: Path | None, hub_id: str | None, revision: str | None,
    hf_spec: str | None, upload: bool, no_cache: bool,
) -> None:
    """Fingerprint base weights locally and register them.

    Either FOLDER (safetensors weights, sharded or not) with --name and --revision, or
    --hf-cache ORG/NAME@REV for a snapshot already in the Hugging Face cache (HF_HOME),
    whose LFS blobs are re-hashed first. Only the tensor manifest is sent unless --upload.
    Registering the same weights again returns the same base id. Versions pushed earlier
    against this hub id and revision are shape-checked at once.

    With --json, prints the base (id, fingerprint, ...) plus created and uploaded_bytes.
    """
    if hf_spec is not None and (folder is not None or hub_id or revision):
        raise click.UsageError("--hf-cache replaces FOLDER, --name and --revision")
    if hf_spec is None and (folder is None or not hub_id or not revision):
        raise click.UsageError("give FOLDER with --name and --revision, or --hf-cache")
    client = _client(app)
    result: RegisteredBase
    with app.progress_bar("fingerprint") as bar:
        if hf_spec is not None:
            result = client.register_hf_cache(hf_spec, upload=upload, no_cache=no_cache,
                                               progress=bar)
        else:
            assert folder is not None and hub_id and revision  # checked above
            result = client.register_base(folder, hub_id, revision, upload=upload,
                                          no_cache=no_cache, progress=bar)
    if app.json:
        output.emit_json(result)
        return
    what = "registered" if result.created else "already registered:"
    uploaded = f", {output.size(result.uploaded_bytes)} uploaded" if upload else ""
    app.say(f"{what} base {result.id} {result.hub_id}@{result.revision} "
            f"fingerprint {result.fingerprint} ({result.tensor_count} tensors, "
            f"{output.size(result.total_bytes)}{uploaded})")


@base.command("ls")
@click.option("--name", "hub_id", metavar="HUB_ID", help="Only bases with this hub id.")
@click.option("--revision", metavar="REV", help="Only bases with this revision.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@json_option
@pass_app
def base_ls(app: App, hub_id: str | None, revision: str | None, limit: int | None) -> None:
    """List registered base models."""
    rows = app.client().bases(hub_id=hub_id, revision=revision, limit=limit)
    if app.json:
        output.emit_json(rows)
    elif not rows:
        app.note("nothing found")
    else:
        output.table(
            ["ID", "BASE", "FINGERPRINT", "TENSORS", "SIZE", "UPLOADED", "CREATED"],
            [[r.id, f"{r.hub_id}@{r.revision[:12]}", r.fingerprint[:16], r.tensor_count,
              output.size(r.total_bytes), "yes" if r.files else "no", output.when(r.created_at)]
             for r in rows],
        )


@base.command("show")
@click.argument("base_id", metavar="ID", type=click.IntRange(min=1))
@json_option
@pass_app
def base_show(app: App, base_id: int) -> None:
    """Show one registered base model and its uploaded files."""
    b = app.client().base(base_id)
    if app.json:
        output.emit_json(b)
        return
    output.fields([
        ("id", b.id), ("base", f"{b.hub_id}@{b.revision}"),
        ("fingerprint", b.fingerprint), ("tensors", b.tensor_count),
        ("size", output.size(b.total_bytes)), ("created by", b.created_by),
        ("created", output.when(b.created_at)),
        ("uploaded", f"{len(b.files)} files" if b.files else "no"),
    ])
    if b.files:
        click.echo("")
        output.table(["FILE", "SIZE", "SHA256"],
                     [[f.path, output.size(f.size), f.digest] for f in b.files])


@click.command()
@click.argument("ref", metavar="REF")
@click.option("--base-path", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder holding the base weights to check.")
@click.option("--no-cache", is_flag=True, help="Hash every tensor again (no fingerprint cache).")
@json_option
@pass_app
def verify(app: App, ref: str, base_path: Path, no_cache: bool) -> None:
    """Check that the weights in --base-path are the base version REF was verified against.

    The folder is fingerprinted locally (with the fingerprint cache unless --no-cache) and
    compared with the fingerprint recorded for REF's base. Exit 0 with
    "compatible: fingerprint ..." when they match; exit 4 with one line naming both
    fingerprints and the first differing tensor when they do not, or when REF's base is
    not registered. Nothing changes in the registry or the folder (only the local
    fingerprint cache learns the files, unless --no-cache).
    """
    with app.progress_bar("fingerprint") as bar:
        result = _client(app).ensure_compatible(ref, base_path, no_cache=no_cache, progress=bar)
    if app.json:
        output.emit_json(result)
        return
    app.say(f"compatible: fingerprint {result.fingerprint} ({result.ref} on "
            f"{result.path}, {_base_name(result.base)}, {result.tensors} tensors)")


def _base_name(base: BaseRefOut) -> str:
    return f"{base.hub_id}@{base.revision}"
