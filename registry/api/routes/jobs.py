"""Jobs (queue, progress, cancel) and merges (request, merged artifact)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from registry.api import problems
from registry.api import schemas as s
from registry.api.routes.adapters import ref_of
from registry.services import jobs, merges, versions
from registry.web.context import CtxDep

router = APIRouter(prefix="/api/v1", tags=["jobs"])
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post("/adapters/{ns}/{name}/versions/{sel}/merge", response_model=s.MergeOut,
             status_code=202, responses={200: {"model": s.MergeOut}, **problems.responses(409)})
def request_merge(ns: str, name: str, sel: str, body: s.MergeIn, ctx: CtxDep,
                  response: Response) -> s.MergeOut:
    """Merge a version into its base: 200 with the artifact if it exists, else 202 + job."""
    ctx.require("write", ns)
    with ctx.tx() as session:
        version = versions.get_version(session, ref_of(ns, name, sel))
        req = merges.request_merge(session, ctx.actor, version, body.base_id)
        ref = f"{ns}/{name}@{version.number}"
        out = s.MergeOut(
            artifact=s.artifact_out(req.artifact, ref) if req.artifact else None,
            job=s.job_out(req.job) if req.job else None, created=req.created)
    if req.artifact is not None:
        response.status_code = 200
    return out


@router.get("/adapters/{ns}/{name}/versions/{sel}/merged", response_model=s.ArtifactOut)
def merged(ns: str, name: str, sel: str, ctx: CtxDep) -> s.ArtifactOut:
    """The newest merged artifact of a version (files to pull)."""
    ctx.require("read", ns)
    with ctx.tx() as session:
        version = versions.get_version(session, ref_of(ns, name, sel))
        artifact = merges.latest_artifact(session, version)
        return s.artifact_out(artifact, f"{ns}/{name}@{version.number}")


@router.get("/jobs", response_model=s.Page[s.JobOut])
def list_jobs(ctx: CtxDep, status: str | None = None, kind: str | None = None,
              target: str | None = None, cursor: str | None = None, limit: Limit = 50
              ) -> s.Page[s.JobOut]:
    with ctx.tx() as session:
        page = jobs.list_jobs(session, scope=ctx.principal.scope, status=status, kind=kind,
                              target=target, cursor=cursor, limit=limit)
        return s.Page[s.JobOut](items=[s.job_out(j) for j in page.items],
                               next_cursor=page.next_cursor)


@router.get("/jobs/{job_id}", response_model=s.JobOut)
def get_job(job_id: int, ctx: CtxDep) -> s.JobOut:
    with ctx.tx() as session:
        job = jobs.get_job(session, job_id)
        ctx.require("read", job.namespace)
        return s.job_out(job)


@router.post("/jobs/{job_id}/cancel", response_model=s.JobOut,
             responses=problems.responses(409))
def cancel_job(job_id: int, ctx: CtxDep) -> s.JobOut:
    """Cancel a queued job now, or ask its worker to stop between tensors."""
    with ctx.tx() as session:
        job = jobs.get_job(session, job_id)
        ctx.require("write", job.namespace)
        return s.job_out(jobs.request_cancel(session, ctx.actor, job_id))
